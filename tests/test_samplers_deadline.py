"""Simulated per-round deadline in the built-in samplers: stragglers become dropouts."""

from __future__ import annotations

import math

import pytest
import torch

import privfl
from privfl.builtin.samplers import (
    AllSampler,
    PoissonSampler,
    UniformSampler,
    on_time_probability,
    response_times,
)
from privfl.testing import tiny_federation


def test_response_times_have_median_one_and_the_stated_spread() -> None:
    ids = torch.arange(20_000)
    times = response_times(ids, num_clients=20_000, spread=0.7, seed=3, round=1)
    logs = times.log()
    assert logs.median().item() == pytest.approx(0.0, abs=0.03)
    assert logs.std().item() == pytest.approx(0.7, rel=0.03)


def test_half_the_log_variance_is_the_clients_device_and_persists() -> None:
    ids = torch.arange(20_000)
    first = response_times(ids, num_clients=20_000, spread=0.5, seed=0, round=1).log()
    later = response_times(ids, num_clients=20_000, spread=0.5, seed=0, round=7).log()
    correlation = torch.corrcoef(torch.stack([first, later]))[0, 1].item()
    assert correlation == pytest.approx(0.5, abs=0.03)


def test_late_fraction_matches_the_on_time_probability() -> None:
    sampler = AllSampler(deadline=1.5, device_spread=0.5)
    ids = torch.arange(5000)
    late = sum(
        len(sampler.stragglers(ids, num_clients=5000, seed=1, round=r)) for r in range(1, 41)
    )
    expected = 1 - on_time_probability(1.5, 0.5)  # 1 - Phi(ln 1.5 / 0.5) = 0.209
    assert expected == pytest.approx(0.2087, abs=1e-3)
    assert late / (40 * 5000) == pytest.approx(expected, abs=0.01)


def test_stragglers_are_seeded_and_absent_without_a_deadline() -> None:
    ids = torch.tensor([2, 5, 9, 14, 30])
    with_deadline = UniformSampler(5, deadline=1.0)
    first = with_deadline.stragglers(ids, num_clients=40, seed=4, round=2)
    again = with_deadline.stragglers(ids, num_clients=40, seed=4, round=2)
    assert torch.equal(first, again)
    assert set(first.tolist()) <= set(ids.tolist())
    assert len(UniformSampler(5).stragglers(ids, num_clients=40, seed=4, round=2)) == 0


def test_expected_clients_count_only_those_on_time() -> None:
    p = on_time_probability(2.0, 0.5)
    assert PoissonSampler(0.1, deadline=2.0).expected_clients(1000) == pytest.approx(100 * p)
    assert AllSampler(deadline=2.0).expected_clients(1000) == pytest.approx(1000 * p)
    assert UniformSampler(10, deadline=2.0).expected_clients(100) == pytest.approx(10 * p)


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True])
def test_a_deadline_that_is_not_a_positive_number_is_refused(value) -> None:
    with pytest.raises(privfl.ConfigError, match=r"deadline = .* a finite number > 0"):
        UniformSampler(10, deadline=value)
    with pytest.raises(privfl.ConfigError, match=r"device_spread = .* a finite number > 0"):
        PoissonSampler(0.1, device_spread=value)


def test_rounds_record_stragglers_and_train_without_them() -> None:
    fed = tiny_federation(num_clients=20, sampler=AllSampler(deadline=1.0), executor="serial")
    records = fed.run(3)
    for record in records:
        late = record.values["stragglers"]
        assert 0 < len(late) < 20
        expected = fed.sampler.stragglers(
            torch.arange(20), num_clients=20, seed=0, round=record.round
        )
        assert late == expected.tolist()
        assert record.clients == list(range(20))  # chosen, then late
        sizes = [len(part) for part in fed.client_data.partition]  # type: ignore[attr-defined]
        assert record.num_examples == sum(s for c, s in enumerate(sizes) if c not in late)


def test_secure_aggregation_counts_stragglers_as_dropped_in_its_first_phase() -> None:
    fed = tiny_federation(
        num_clients=12,
        sampler=AllSampler(deadline=1.0),
        mechanisms=["secagg"],
        options={"secagg": {"tolerated_dropout": 0.6}},
    )
    record = fed.run(1)[-1]
    late = record.values["stragglers"]
    assert late
    assert record.values["secagg_dropped"]["advertise_keys"] == late
    assert record.values["secagg_contributors"] == 12 - len(late)
