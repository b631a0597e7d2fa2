"""Secure aggregation as a federation's mechanism: exact FedAvg, dropouts, aborts, DP."""

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
