"""Secure aggregation as a federation's mechanism: exact FedAvg, dropouts, aborts, DP, rings."""

from __future__ import annotations

import pytest
import torch

import privfl
from privfl.testing import ClearSum, tiny_federation

LOST = ("advertise_keys", "share_keys", "masked_input")
"""Phases in which a dropout keeps the client's input out of the sum."""


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("variant", ["secagg", "secagg+"])
def test_secure_fedavg_equals_plain_fedavg_up_to_rounding(variant):
    plain = tiny_federation(num_clients=8)
    secure = tiny_federation(num_clients=8, mechanisms=[variant])
    start = plain.params.clone()
    plain.run(2)
    (_, record) = secure.run(2)
    assert relative_error(secure.params - start, plain.params - start) < 1e-4
    assert record.values["secagg_contributors"] == 8
    assert set(record.values["secagg_bytes_sent"]) == {str(c) for c in range(8)}
    assert min(record.values["secagg_bytes_sent"].values()) > 4 * 19  # a 64-bit update


def test_dropouts_leave_exactly_the_survivors_in_the_sum():
    secure = tiny_federation(
        num_clients=10, mechanisms=["secagg+"], options={"secagg+": {"dropout": 0.3}}
    )
    start = secure.params.clone()
    (record,) = secure.run(1)
    dropped = record.values["secagg_dropped"]
    assert sum(len(ids) for ids in dropped.values()) == 3
    lost = {c for phase in LOST for c in dropped.get(phase, [])}
    survivors = set(range(10)) - lost
    assert record.values["secagg_contributors"] == len(survivors)
    reference = tiny_federation(num_clients=10, mechanisms=[ClearSum(keep=survivors)])
    reference.run(1)
    assert relative_error(secure.params - start, reference.params - start) < 1e-4


def test_too_many_dropouts_abort_the_round_and_keep_the_model():
    fed = tiny_federation(
        num_clients=10,
        mechanisms=["secagg"],
        options={"secagg": {"dropout": 0.6, "tolerated_dropout": 0.1}},
    )
    before = fed.params.clone()
    (record,) = fed.run(1)
    assert torch.equal(fed.params, before)
    assert "threshold" in record.values["aborted"]


def test_secure_aggregation_refuses_robust_aggregators():
    with pytest.raises(privfl.ConfigError, match="reveals only their sum"):
        tiny_federation(mechanisms=["secagg+"], aggregator="trimmed-mean")


@pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning")
def test_distributed_dp_behind_secure_aggregation_accounts_the_realized_noise():
    options = {"dp": {"mode": "distributed", "noise_multiplier": 2.0, "secure_noise": True}}
    full = tiny_federation(num_clients=10, mechanisms=["dp", "secagg+"], options=options)
    dropping = tiny_federation(
        num_clients=10,
        mechanisms=["dp", "secagg+"],
        options={**options, "secagg+": {"dropout": 0.3}},
    )
    (full_record,) = full.run(1)
    (dropping_record,) = dropping.run(1)
    assert full_record.values["secagg_contributors"] == 10
    assert dropping_record.values["secagg_contributors"] < 10
    # Fewer noise shares reached the sum: the same round costs more privacy.
    assert dropping_record.values["epsilon"] > full_record.values["epsilon"]


def test_same_seed_same_model_despite_fresh_keys():
    """Keys are drawn from the OS every round, but the sum is exact: runs repeat to the bit."""
    runs = [
        tiny_federation(
            num_clients=10, mechanisms=["secagg+"], options={"secagg+": {"dropout": 0.2}}
        )
        for _ in range(2)
    ]
    records = [fed.run(2) for fed in runs]
    assert torch.equal(runs[0].params, runs[1].params)
    assert records[0][-1].values["secagg_dropped"] == records[1][-1].values["secagg_dropped"]


class AtTheBound(privfl.PrivacyMechanism):
    """Replaces every client's update by ``value`` in every coordinate, and declares it.

    With a fixed denominator clients contribute with weight 1, so the aggregate of a
    full cohort is ``value`` itself: any wrap-around of the ring would show.
    """

    name = "at-the-bound"
    fixed_denominator = True

    def __init__(self, value: float) -> None:
        self.value = value

    def client_step(self, update, *, config, generator, statistics):
        return torch.full_like(update, self.value)

    def value_bound(self, bound):
        return abs(self.value)


@pytest.mark.parametrize(("value", "bits"), [(12.7, 32), (-12.7, 32), (12.8, 64), (-12.8, 64)])
def test_contributions_at_the_declared_bound_sum_exactly_in_the_ring_picked(value, bits):
    """10 clients at |v| = 12.7 fill 99.2% of a 32-bit ring; at 12.8 its sum would wrap."""
    fed = tiny_federation(num_clients=10, mechanisms=[AtTheBound(value), "secagg+"])
    start = fed.params.clone()
    (record,) = fed.run(1)
    assert record.values["secagg_ring_bits"] == bits
    assert record.values["secagg_bound"] == pytest.approx(abs(value), rel=1e-6)
    assert record.values["secagg_clamped"] == 0
    moved = fed.params - start
    assert torch.allclose(moved, torch.full_like(moved, value), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("clip", "bits"), [(12.7, 32), (12.8, 64)])
@pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning")
def test_dp_clip_norm_picks_the_ring(clip, bits):
    options = {"dp": {"clip": clip, "secure_noise": True}}
    fed = tiny_federation(num_clients=10, mechanisms=["dp", "secagg+"], options=options)
    (record,) = fed.run(1)
    assert record.values["secagg_bound"] == pytest.approx(clip, rel=1e-6)
    assert record.values["secagg_ring_bits"] == bits


@pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning")
def test_noise_added_by_clients_widens_the_bound():
    options = {"dp": {"mode": "distributed", "noise_multiplier": 2.0, "secure_noise": True}}
    fed = tiny_federation(num_clients=10, mechanisms=["dp", "secagg+"], options=options)
    (record,) = fed.run(1)
    # C + 10 standard deviations of a client's share of the noise, 2 C / sqrt(10).
    assert record.values["secagg_bound"] == pytest.approx(1 + 10 * 2 / 10**0.5, rel=1e-6)
    assert record.values["secagg_clamped"] == 0


def test_without_a_declared_bound_or_with_example_weights_the_bound_stays():
    plain = tiny_federation(num_clients=10, mechanisms=["secagg+"])
    (record,) = plain.run(1)
    assert (record.values["secagg_bound"], record.values["secagg_ring_bits"]) == (2.0**20, 64)

    class ExampleWeighted(AtTheBound):
        fixed_denominator = False  # FedAvg's weights: the clients' example counts

    weighted = tiny_federation(num_clients=10, mechanisms=[ExampleWeighted(0.5), "secagg+"])
    (record,) = weighted.run(1)
    assert record.values["secagg_bound"] == 2.0**20


def test_a_mechanism_that_changes_updates_declares_no_bound_unless_it_says_so():
    class Doubling(privfl.PrivacyMechanism):
        name = "doubling"

        def client_step(self, update, *, config, generator, statistics):
            return 2 * update

    assert privfl.PrivacyMechanism().value_bound(3.0) == 3.0
    assert privfl.PrivacyMechanism().value_bound(None) is None
    assert Doubling().value_bound(3.0) is None
    assert AtTheBound(-2.0).value_bound(None) == 2.0


@pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning")
def test_a_fixed_ring_too_small_for_the_bounds_is_refused_before_training():
    narrow = tiny_federation(
        num_clients=10, mechanisms=["secagg+"], options={"secagg+": {"ring_bits": 32}}
    )
    with pytest.raises(privfl.ConfigError, match=r"ring_bits.*set ring_bits = 64"):
        narrow.run(1)
    assert narrow.round == 0
    options = {"dp": {"secure_noise": True}, "secagg+": {"ring_bits": 32}}
    clipped = tiny_federation(num_clients=10, mechanisms=["dp", "secagg+"], options=options)
    (record,) = clipped.run(1)
    assert record.values["secagg_ring_bits"] == 32
    with pytest.raises(privfl.ConfigError, match="ring_bits"):
        tiny_federation(mechanisms=["secagg+"], options={"secagg+": {"ring_bits": 16}})


def test_clamped_values_are_counted_at_most_the_encoded_bound_per_client():
    """At bound 1 and 0 fractional bits every value encodes to at most B = 1, and so does
    each client's clamp count, so the ring sized for values holds the counts' sum too."""
    fed = tiny_federation(
        num_clients=10,
        mechanisms=[AtTheBound(5.0), "secagg+"],
        options={"secagg+": {"bound": 1.0, "frac_bits": 0}},
    )
    start = fed.params.clone()
    (record,) = fed.run(1)
    assert record.values["secagg_bound"] == 1.0
    assert record.values["secagg_clamped"] == 10  # each client clamped 18 values: 1 each
    moved = fed.params - start
    assert torch.allclose(moved, torch.ones_like(moved))  # every value clamped to the bound
