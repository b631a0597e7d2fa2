"""The example plugin's own tests, written with privfl.testing."""

from __future__ import annotations

import privfl_example
import torch

from privfl.testing import tiny_federation


def test_unweighted_mean_ignores_weights():
    updates = torch.tensor([[0.0, 2.0], [4.0, 6.0]])
    mean = privfl_example.UnweightedMean().aggregate(updates, torch.tensor([1.0, 100.0]))
    assert mean.tolist() == [2.0, 4.0]


def test_federation_trains_with_the_plugin():
    fed = tiny_federation(plugins=[privfl_example], aggregator="unweighted-mean")
    records = fed.run(3)
    assert records[-1].metrics["accuracy"] > 0.8


def test_update_norm_bound_caps_every_update_where_the_client_runs():
    bound = privfl_example.UpdateNormBound(max_norm=0.5)
    big, small = torch.full((100,), 1.0), torch.full((100,), 0.001)
    generator = torch.Generator()
    capped = bound.client_step(big, config={}, generator=generator, statistics={})
    assert abs(float(capped.norm()) - 0.5) < 1e-5
    assert torch.equal(
        bound.client_step(small, config={}, generator=generator, statistics={}), small
    )
    bounded = tiny_federation(
        plugins=[privfl_example],
        mechanisms=["update-norm-bound"],
        options={"update-norm-bound": {"max_norm": 1e-3}},
    )
    start = bounded.params.clone()
    bounded.run(1)
    assert float((bounded.params - start).norm()) <= 1e-3 + 1e-6
