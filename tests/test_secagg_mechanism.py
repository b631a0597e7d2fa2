"""Secure aggregation as a federation's mechanism: exact FedAvg, dropouts, aborts, DP, rings."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import privfl
import privfl.builtin.executors
from privfl.builtin.secure_aggregation import SecAgg
from privfl.client_runtime import _all_finite
from privfl.messages import bytes_tensor, tensor_bytes
from privfl.secagg import KeyDirectory
from privfl.secagg.messages import AdvertiseKeys, UnmaskResponse
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


class HugeForSome(privfl.PrivacyMechanism):
    """Replaces the update of about 40% of the clients (drawn from the client's own
    generator) by 3e38 in every coordinate: finite, but not once weighted."""

    name = "huge-for-some"

    def client_step(self, update, *, config, generator, statistics):
        if float(torch.rand((), generator=generator)) < 0.4:
            return torch.full_like(update, 3e38)
        return update


def test_a_huge_update_is_refused_naming_its_client_and_the_round_goes_on():
    tolerant = {"secagg": {"tolerated_dropout": 0.5}}
    secure = tiny_federation(num_clients=8, mechanisms=[HugeForSome(), "secagg"], options=tolerant)
    start = secure.params.clone()
    (record,) = secure.run(1)
    huge = set(record.rejected)
    assert 0 < len(huge) < 8
    for client in huge:
        assert record.rejected[client].startswith("the update times its weight")
        assert record.rejected[client].endswith("overflows float32")
    assert record.values["secagg_contributors"] == 8 - len(huge)
    reference = tiny_federation(num_clients=8, mechanisms=[HugeForSome(), ClearSum()])
    (clear,) = reference.run(1)
    assert set(clear.rejected) == huge
    assert relative_error(secure.params - start, reference.params - start) < 1e-4


def test_huge_values_with_unit_weights_are_clamped_and_counted():
    fed = tiny_federation(num_clients=4, mechanisms=[AtTheBound(3e38), "secagg+"])
    start = fed.params.clone()
    (record,) = fed.run(1)
    assert record.values["secagg_bound"] == 2.0**20
    assert record.values["secagg_clamped"] == 4 * fed.params.numel()
    moved = fed.params - start
    assert torch.equal(moved, torch.full_like(moved, 2.0**20))


class CorruptingExecutor(privfl.builtin.executors.SerialExecutor):
    """Adds 1 to the shares in client 2's unmasking reply, as a bad client would."""

    name = "corrupting"

    def send_and_receive(self, messages):
        replies = super().send_and_receive(messages)
        reply = replies.get(2)
        if isinstance(reply, privfl.Message) and reply.values.get("phase") == "unmasking":
            shares = UnmaskResponse.from_bytes(tensor_bytes(reply.tensors["data"]))
            off = tuple((owner, share + 1) for owner, share in shares.seed_shares)
            data = dataclasses.replace(shares, seed_shares=off).to_bytes()
            replies[2] = privfl.Message(reply.kind, reply.values, {"data": bytes_tensor(data)})
        return replies


def test_a_corrupt_share_aborts_the_round_naming_its_sender_and_keeps_the_model():
    """t = 6 of 10 clients: 9 shares of each seed, enough to tell which one is wrong."""
    fed = tiny_federation(
        num_clients=10,
        mechanisms=["secagg"],
        options={"secagg": {"tolerated_dropout": 0.3}},
        executor=CorruptingExecutor(),
    )
    before = fed.params.clone()
    (record,) = fed.run(1)
    assert torch.equal(fed.params, before)
    assert record.values["aborted"].startswith("secure aggregation stopped: the share of client")
    assert "that client 2 sent does not lie on the polynomial" in record.values["aborted"]


def test_each_round_binds_its_session_and_number():
    fed = tiny_federation(num_clients=4, mechanisms=["secagg+"])
    other = tiny_federation(num_clients=4, mechanisms=["secagg+"])
    mechanism, twin = fed.mechanisms[0], other.mechanisms[0]
    configs = [mechanism.client_config(round=r, client_ids=[0, 1, 2, 3]) for r in (1, 2)]
    protocols = [mechanism._protocol(c) for c in configs]
    assert [p.round for p in protocols] == [1, 2]
    assert protocols[0].session == protocols[1].session
    assert len(protocols[0].session) == 16
    session = twin._protocol(twin.client_config(round=1, client_ids=[0, 1, 2, 3])).session
    assert session != protocols[0].session  # another federation, another session


def test_a_client_presenting_another_signing_key_is_left_out_naming_it():
    """The server pins each client's first key (trust on first use, for the PKI)."""
    fed = tiny_federation(
        num_clients=10, mechanisms=["secagg"], options={"secagg": {"tolerated_dropout": 0.3}}
    )
    fed.run(1)
    host = fed.mechanisms[0]  # in-process: the server half and the hosts' client half
    host._signing_keys[3] = Ed25519PrivateKey.generate()  # the host lost its keys
    host._pinned = KeyDirectory(first_use=True)
    record = fed.run(2)[-1]
    assert record.round == 2
    assert record.values["secagg_rejected"] == {
        "3": "client 3 presents another signing key than the one registered for it"
    }
    assert record.values["secagg_contributors"] == 9


def test_every_host_derives_the_same_signing_key_for_a_client():
    """A copy of the mechanism sent to another host (a worker process, a Ray actor)
    signs for a client with the same key, so the server's pin holds wherever it runs."""
    mechanism = tiny_federation(num_clients=4, mechanisms=["secagg+"]).mechanisms[0]
    elsewhere = pickle.loads(pickle.dumps(mechanism))
    config = mechanism.client_config(round=1, client_ids=[0, 1, 2, 3])

    def verify_key(host, client):
        first = host.secure_client(client_id=client, config=config).start(torch.zeros(3))
        return AdvertiseKeys.from_bytes(first).verify_key

    assert verify_key(mechanism, 2) == verify_key(elsewhere, 2)
    assert verify_key(mechanism, 2) != verify_key(mechanism, 3)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("threshold", 1, "threshold 1, 1 corrupted"), ("corrupted", 0, "threshold 8, 0 corrupted")],
)
def test_a_client_refuses_a_round_config_weaker_than_its_own_options(key, value, match):
    """A server that sent t = 1 could rebuild a client's secrets from one share."""
    mechanism = tiny_federation(num_clients=10, mechanisms=["secagg"]).mechanisms[0]
    config = mechanism.client_config(round=1, client_ids=list(range(10)))
    assert config["corrupted"] == 1
    with pytest.raises(privfl.PrivflError, match=rf"server's round config has {match}"):
        mechanism.secure_client(client_id=0, config={**config, key: value})


def test_against_a_semi_honest_server_a_round_survives_losing_half_its_clients():
    """8 clients, 4 of them dropping after sharing keys: the majority quorum (5) is out
    of reach, t signatures (t = 3) are not."""
    options = {"dropout": 0.5, "tolerated_dropout": 0.5}
    plans = {
        "malicious": {"secagg": options},
        "semi-honest": {"secagg": {**options, "malicious_server": False}},
    }
    records = {}
    for name, settings in plans.items():
        fed = tiny_federation(num_clients=8, mechanisms=["secagg"], options=settings, seed=3)
        (records[name],) = fed.run(1)
    assert "quorum" in records["malicious"].values["aborted"]
    assert records["semi-honest"].values["secagg_contributors"] >= 4


class WeakerInRound2(SecAgg):
    """A deviating server half: round 2's tasks carry threshold 1."""

    def client_config(self, *, round, client_ids):
        config = super().client_config(round=round, client_ids=client_ids)
        return {**config, "threshold": 1} if round == 2 else config


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_clients_refusing_a_weaker_round_sit_it_out_and_the_run_goes_on(executor):
    """A server that lowers one round's threshold gets refusals, not secrets: each
    client's reason is recorded, that round leaves the model as it was, and the next
    round (with honest settings) runs, in process and across worker processes alike."""
    fed = tiny_federation(num_clients=10, mechanisms=["secagg"], executor=executor)
    fed.mechanisms[0].__class__ = WeakerInRound2
    try:
        first, refused, third = fed.run(3)
    finally:
        fed.close()
    assert sorted(refused.rejected) == list(range(10))
    assert all("threshold 1" in reason for reason in refused.rejected.values())
    assert refused.num_examples == 0
    assert first.values["secagg_contributors"] == third.values["secagg_contributors"] == 10


def test_a_client_refusing_a_request_mid_protocol_aborts_only_that_round(monkeypatch):
    """A refusal after the first phase (as for a split unmask request) means the server
    deviated: the round is aborted naming the client and its reason, the run goes on."""
    fed = tiny_federation(num_clients=6, mechanisms=["secagg"])
    mechanism = fed.mechanisms[0]
    real = mechanism.secure_client

    def secure_client(*, client_id, config):
        client = real(client_id=client_id, config=config)
        if client_id == 4 and config["round"] == 1:
            step = client.step

            def refusing(phase, data):
                if phase == "unmasking":
                    raise privfl.PrivflError("that request would unmask client 2: refusing")
                return step(phase, data)

            client.step = refusing
        return client

    monkeypatch.setattr(mechanism, "secure_client", secure_client)
    aborted, after = fed.run(2)
    assert aborted.values["aborted"] == (
        "client 4 refused the 'unmasking' phase: that request would unmask client 2: refusing"
    )
    assert after.values["secagg_contributors"] == 6


def test_the_finiteness_check_before_encoding_survives_a_sum_that_overflows():
    """A sum that overflows float32 sends the check value by value: finite values pass,
    a NaN or an infinity anywhere does not."""
    big = torch.full((4,), 3e38)
    assert float(big.sum()) == float("inf")
    assert _all_finite(big)
    assert _all_finite(torch.randn(1000))
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not _all_finite(torch.tensor([1.0, bad, 2.0]))
        assert not _all_finite(torch.cat([big, torch.tensor([bad])]))
