"""SecAgg and SecAgg+ rounds: exact sums under dropouts, aborts, what the server sees."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from privfl.errors import ConfigError, PrivflError, RoundAborted
from privfl.secagg import (
    PHASES,
    DropoutPlan,
    ProtocolError,
    SecAggAborted,
    SecAggConfig,
    primitives,
    secagg_config,
    secure_sum,
)
from privfl.secagg.messages import MaskedInput, ShareRelay, UnmaskRequest

DIM = 257  # odd, so no vector length lines up with a power of two by luck


def _inputs(ids, ring_bits=64, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.uint64 if ring_bits == 64 else np.uint32
    return {u: rng.integers(0, 2**ring_bits, size=dim, dtype=dtype) for u in ids}


def _plain_sum(inputs, clients, dtype):
    total = np.zeros(len(next(iter(inputs.values()))), dtype=dtype)
    for u in clients:
        total += inputs[u]
    return total


def _plan(ids, count, phase, seed):
    chosen = np.random.default_rng(seed).choice(ids, size=count, replace=False)
    return DropoutPlan(**{phase: frozenset(int(u) for u in chosen)})


@pytest.mark.parametrize("variant", ["secagg", "secagg+"])
@pytest.mark.parametrize("n", [3, 10, 50])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("phase", ["share_keys", "masked_input", "unmasking"])
def test_sum_of_survivors_is_exact_under_dropouts(variant, n, rate, phase):
    ids = [7 * i + 3 for i in range(n)]  # ids need not be 0..n-1
    count = math.ceil(rate * n)
    config = secagg_config(
        ids,
        variant=variant,
        dropout_rate=count / n,
        corruption_rate=0.1,
        ring_bits=64,
        seed=n,
    )
    inputs = _inputs(ids, seed=n)
    plan = _plan(ids, count, phase, seed=count)
    outcome = secure_sum(inputs, config, dropout=plan)
    expected_survivors = sorted(set(ids) - plan.share_keys - plan.masked_input)
    assert outcome.survivors == expected_survivors
    np.testing.assert_array_equal(outcome.total, _plain_sum(inputs, expected_survivors, np.uint64))
    assert outcome.dropped[phase] == sorted(getattr(plan, phase))
    assert sum(map(len, outcome.dropped.values())) == count


@pytest.mark.parametrize("variant", ["secagg", "secagg+"])
def test_dropouts_in_every_phase_at_once_with_a_32_bit_ring(variant):
    ids = list(range(40))
    config = secagg_config(
        ids, variant=variant, dropout_rate=0.2, corruption_rate=0.05, ring_bits=32, seed=1
    )
    inputs = _inputs(ids, ring_bits=32)
    plan = DropoutPlan.random(ids, 0.2, seed=3)
    assert all(getattr(plan, phase) for phase in PHASES)  # the seed spreads them out
    outcome = secure_sum(inputs, config, dropout=plan)
    assert outcome.total.dtype == np.uint32
    np.testing.assert_array_equal(outcome.total, _plain_sum(inputs, outcome.survivors, np.uint32))


def test_secagg_plus_uses_a_sparse_graph_and_less_traffic():
    ids = list(range(60))
    kwargs = {"dropout_rate": 0.1, "corruption_rate": 0.1, "ring_bits": 64, "seed": 2}
    sparse = secagg_config(ids, variant="secagg+", **kwargs)
    complete = secagg_config(ids, variant="secagg", **kwargs)
    assert sparse.neighbours is not None
    assert {len(vs) for vs in sparse.neighbours.values()} == {14}
    assert complete.neighbours is None
    inputs = _inputs(ids, dim=8)
    plus, plain = secure_sum(inputs, sparse), secure_sum(inputs, complete)
    np.testing.assert_array_equal(plus.total, plain.total)
    assert sum(plus.bytes_sent.values()) < sum(plain.bytes_sent.values()) / 2


@pytest.mark.parametrize(
    ("phase", "count", "left"),
    [("advertise_keys", 3, 7), ("share_keys", 3, 7), ("masked_input", 2, 8)],
)
def test_too_few_clients_abort_the_round_naming_the_phase(phase, count, left):
    ids = list(range(10))
    config = SecAggConfig(10, threshold=8)
    inputs = _inputs(ids)
    before = {u: v.copy() for u, v in inputs.items()}
    plan = DropoutPlan(**{phase: frozenset(range(count))})
    with pytest.raises(SecAggAborted, match=f"phase '{phase}' with {left} clients left") as info:
        secure_sum(inputs, config, dropout=plan)
    assert isinstance(info.value, RoundAborted)  # privfl.RoundAborted, which rounds catch
    assert isinstance(info.value, PrivflError)
    assert (info.value.phase, info.value.remaining, info.value.threshold) == (phase, left, 8)
    assert str(info.value).endswith("live neighbours, and the threshold is t = 8")
    for u in ids:  # nothing else changed
        np.testing.assert_array_equal(inputs[u], before[u])


def test_too_few_responses_abort_unmasking():
    config = SecAggConfig(10, threshold=8)
    plan = DropoutPlan(unmasking=frozenset({0, 1}))
    with pytest.raises(SecAggAborted, match="phase 'unmasking' with 8 clients left: client 2"):
        secure_sum(_inputs(range(10)), config, dropout=plan)


def test_round_aborts_when_every_client_drops_in_one_phase():
    config = SecAggConfig(4, threshold=2)
    with pytest.raises(SecAggAborted, match="phase 'masked_input' with 0 clients left: no client"):
        secure_sum(_inputs(range(4)), config, dropout=DropoutPlan(masked_input={0, 1, 2, 3}))


def test_secagg_plus_aborts_when_a_needed_client_loses_its_neighbourhood():
    ids = list(range(12))
    config = secagg_config(
        ids, variant="secagg+", dropout_rate=0.1, corruption_rate=0.0, ring_bits=64, seed=0
    )
    assert config.neighbours is not None
    victim = ids[0]
    around = sorted(config.neighbours[victim])
    lost = around[: len(around) - config.threshold + 1]
    with pytest.raises(SecAggAborted, match=f"client {victim} has"):
        secure_sum(_inputs(ids), config, dropout=DropoutPlan(share_keys=frozenset(lost)))


def test_masked_inputs_look_uniform_even_for_constant_inputs(by_hand):
    ids = list(range(10))
    config = secagg_config(
        ids, variant="secagg+", dropout_rate=0.1, corruption_rate=0.1, ring_bits=64, seed=3
    )
    zeros = {u: np.zeros(4096, dtype=np.uint64) for u in ids}
    round_ = by_hand(config)
    round_.keys()
    round_.shares()
    masked = round_.masked(zeros)
    round_.survivors(masked)
    round_.requests(round_.signatures())
    assert not round_.server.unmask(round_.responses()).any()

    def pvalue(values):  # chi-square of 256 equally likely values
        return stats.chisquare(np.bincount(values.astype(np.int64), minlength=256)).pvalue

    for u in (0, 5):
        vector = MaskedInput.from_bytes(masked[u]).vector
        assert pvalue(vector.view(np.uint8)) > 1e-3  # every byte
        assert pvalue(vector >> np.uint64(56)) > 1e-3  # the top byte of each word
    # The same statistics flag the unmasked input, and a slightly biased one.
    assert pvalue(zeros[0].view(np.uint8)) < 1e-100
    biased = np.random.default_rng(0).integers(0, 2**64, 4096, dtype=np.uint64)
    biased[:400] &= np.uint64(2**56 - 1)  # 10% of the words get a zero top byte
    assert pvalue(biased >> np.uint64(56)) < 1e-3


def test_server_transcript_holds_no_input_and_no_secret(by_hand):
    ids = list(range(8))
    config = SecAggConfig(8, threshold=5)
    inputs = _inputs(ids, dim=512, seed=9)
    round_ = by_hand(config)
    total = round_.run(inputs)
    np.testing.assert_array_equal(total, _plain_sum(inputs, ids, np.uint64))
    secrets_ = []
    for u, client in round_.clients.items():
        secrets_ += [
            primitives.private_bytes(client._c_key),
            primitives.private_bytes(client._s_key),
            round_.signing_keys[u].private_bytes_raw(),
            client._seed,
            *client._c_secrets.values(),
        ]
    blob = b"".join(round_.transcript)
    for secret in secrets_:
        assert len(secret) == 32
        assert secret not in blob
    sent_words = np.concatenate(
        [np.frombuffer(m[: len(m) // 8 * 8], "<u8") for m in round_.transcript]
    )
    for u in ids:
        assert inputs[u].tobytes() not in blob
        assert not np.isin(inputs[u], sent_words).any()  # not even one word of an input


def test_secure_sum_transcript_and_byte_counts_agree():
    ids = list(range(6))
    config = SecAggConfig(6, threshold=4)
    plan = DropoutPlan(advertise_keys=frozenset({5}))
    outcome = secure_sum(_inputs(ids), config, dropout=plan, record_transcript=True)
    assert outcome.transcript is not None
    for u in ids:
        up = sum(len(m) for way, c, m in outcome.transcript if way == "up" and c == u)
        down = sum(len(m) for way, c, m in outcome.transcript if way == "down" and c == u)
        assert (outcome.bytes_sent[u], outcome.bytes_received[u]) == (up, down)
    assert outcome.bytes_sent[5] == outcome.bytes_received[5] == 0
    assert outcome.bytes_sent[0] > 8 * DIM
    assert outcome.client_seconds > 0
    assert outcome.server_seconds > 0
    assert secure_sum(_inputs(ids), config).transcript is None


def test_tampered_or_misrouted_share_is_rejected_naming_the_sender(by_hand):
    config = SecAggConfig(4, threshold=2)
    round_ = by_hand(config)
    round_.keys()
    relays, clients = round_.shares(), round_.clients
    relay = ShareRelay.from_bytes(relays[2]).ciphertexts
    (sender, ciphertext), rest = relay[0], relay[1:]
    flipped = bytearray(ciphertext)
    flipped[-1] ^= 1
    tampered = ShareRelay(((sender, bytes(flipped)), *rest)).to_bytes()
    with pytest.raises(ProtocolError, match=f"client {sender} sent to client 2 failed"):
        clients[2].masked_input(tampered, np.zeros(4, np.uint64))
    # The server hands client 3 what client `sender` encrypted for client 2.
    to_three = dict(ShareRelay.from_bytes(relays[3]).ciphertexts)
    to_three[sender] = ciphertext
    misrouted = ShareRelay(tuple(to_three.items())).to_bytes()
    with pytest.raises(ProtocolError, match=f"client {sender} sent to client 3 failed"):
        clients[3].masked_input(misrouted, np.zeros(4, np.uint64))


def _request_for(by_hand, me=0):
    """Client ``me`` of an honest 5-client round (t = 2, quorum 3), just before
    unmasking, and the server's honest request to it."""
    round_ = by_hand(SecAggConfig(5, threshold=2))
    round_.keys()
    round_.shares()
    round_.survivors(round_.masked({u: np.zeros(4, np.uint64) for u in range(5)}))
    requests = round_.requests(round_.signatures())
    return round_.clients[me], UnmaskRequest.from_bytes(requests[me])


def test_client_refuses_to_reveal_both_shares_of_one_client(by_hand):
    client, honest = _request_for(by_hand)
    request = dataclasses.replace(honest, seed_ids=(1, 2, 3), key_ids=(3,))
    with pytest.raises(
        ProtocolError, match=r"the server's unmask request asks for both .* of clients \[3\]"
    ):
        client.unmask(request.to_bytes())


@pytest.mark.parametrize(
    ("seed_ids", "key_ids", "match"),
    [
        ((1, 2, 0), (), "does not hold"),
        ((1, 1, 2), (), "twice"),
        ((1,), (), "only 1"),
        ((1, 2), (3,), r"key shares of \[3\], inside it"),
    ],
)
def test_client_checks_the_unmask_request(by_hand, seed_ids, key_ids, match):
    client, honest = _request_for(by_hand)
    request = dataclasses.replace(honest, seed_ids=seed_ids, key_ids=key_ids)
    with pytest.raises(ProtocolError, match=match):
        client.unmask(request.to_bytes())


def test_client_rejects_keys_of_strangers_and_steps_out_of_order(by_hand):
    graph = {0: {1}, 1: {0, 2}, 2: {1}}
    round_ = by_hand(SecAggConfig(3, threshold=1, neighbours=graph))
    with pytest.raises(ProtocolError, match="expected advertise_keys"):
        round_.clients[0].share_keys(b"")
    broadcasts = round_.keys()
    complete = by_hand(SecAggConfig(3, threshold=1))
    forged = complete.keys()
    with pytest.raises(ProtocolError, match="not of distinct neighbours"):
        round_.clients[0].share_keys(forged[0])  # keys of 1 and 2; 2 is no neighbour of 0
    round_.clients[1].share_keys(broadcasts[1])


def test_inputs_must_match_the_config():
    config = SecAggConfig(3, threshold=2, ring_bits=32)
    with pytest.raises(ConfigError, match="inputs"):
        secure_sum(_inputs(range(3), ring_bits=64), config)
    with pytest.raises(ConfigError, match="inputs"):
        secure_sum(_inputs(range(2), ring_bits=32), config)
    with pytest.raises(ConfigError, match="inputs"):
        secure_sum(_inputs(range(4), ring_bits=32), config)
    early = DropoutPlan(share_keys={2})  # no input needed from a client that never sends one
    lenient = SecAggConfig(3, threshold=1, ring_bits=32)
    assert secure_sum(_inputs(range(2), 32), lenient, dropout=early).survivors == [0, 1]
    with pytest.raises(ConfigError, match="dropout"):
        secure_sum(_inputs(range(3), 32), config, dropout=DropoutPlan(unmasking={7}))


def test_a_masked_input_of_the_wrong_length_is_refused_naming_its_client(by_hand):
    config = SecAggConfig(5, threshold=2)
    round_ = by_hand(config)
    round_.keys()
    round_.shares()
    inputs = _inputs(range(5), dim=4)
    inputs[1] = np.zeros(5, np.uint64)
    round_.survivors(round_.masked(inputs))
    assert round_.server.rejected == {
        1: "client 1: its masked input has 5 values, not 4 as most others"
    }
    round_.requests(round_.signatures())
    total = round_.server.unmask(round_.responses())
    np.testing.assert_array_equal(total, _plain_sum(inputs, [0, 2, 3, 4], np.uint64))


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_clients_mask_their_inputs_inside_the_messages_that_carry_them(by_hand, ring_bits):
    """With a :meth:`MaskedInput.buffer`, the message returned is that buffer (no copy of
    the vector), byte for byte what the copying path sends, and the sum is exact."""
    round_ = by_hand(SecAggConfig(6, threshold=3, ring_bits=ring_bits))
    inputs = _inputs(range(6), ring_bits=ring_bits)
    round_.keys()
    relays = round_.shares()
    buffers = {u: MaskedInput.buffer(DIM, inputs[u].dtype) for u in range(6)}
    for u, (_, vector) in buffers.items():
        vector[:] = inputs[u]
    masked = {
        u: round_.clients[u].masked_input(relays[u], vector, message=message)
        for u, (message, vector) in buffers.items()
    }
    assert all(masked[u] is buffers[u][0] for u in range(6))
    round_.survivors(masked)
    round_.requests(round_.signatures())
    total = round_.server.unmask(round_.responses())
    np.testing.assert_array_equal(total, _plain_sum(inputs, range(6), inputs[0].dtype))


def test_a_message_buffer_must_hold_the_input_in_its_ring(by_hand):
    round_ = by_hand(SecAggConfig(4, threshold=2, ring_bits=64))
    round_.keys()
    relays = round_.shares()
    _, vector = MaskedInput.buffer(DIM, np.uint64)
    other, _ = MaskedInput.buffer(DIM, np.uint64)
    with pytest.raises(ProtocolError, match="client 0's input is not the vector of a message"):
        round_.clients[0].masked_input(relays[0], vector, message=other)
