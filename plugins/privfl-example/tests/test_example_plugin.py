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
