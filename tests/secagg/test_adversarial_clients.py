"""Bad clients and a meddling network: every fault is named, no sum is silently wrong.

Each case either raises a ProtocolError naming the sender, or leaves the sender out
(named in the server's ``rejected``) and returns the exact sum of the others.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from privfl.secagg import ProtocolError, SecAggConfig, primitives, trusted_setup
from privfl.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    UnmaskResponse,
)

DIM = 9


def _inputs(ids, seed=0, dtype=np.uint64):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(0, np.iinfo(dtype).max, DIM, dtype=dtype, endpoint=True) for u in ids}


def _sum(inputs, ids):
    total = np.zeros(DIM, dtype=next(iter(inputs.values())).dtype)
    for u in ids:
        total += inputs[u]
    return total


def _two_rounds(by_hand, n=6, threshold=3):
    """Rounds 1 and 2 of one session, their clients holding the same signing keys."""
    signing = trusted_setup(range(n))
    first, second = (
        by_hand(SecAggConfig(n, threshold, session=b"session", round=r), signing) for r in (1, 2)
    )
    return first, second


def test_a_masked_input_replayed_from_the_previous_round_is_rejected(by_hand):
    first, second = _two_rounds(by_hand)
    inputs = _inputs(range(6))
    first.run(inputs)
    old = next(m for m in first.transcript if m[1] == MaskedInput.KIND and m[2:6] == b"\0\0\0\3")
    second.keys()
    second.shares()
    masked = second.masked(inputs)
    masked[3] = old
    second.survivors(masked)
    assert list(second.server.rejected) == [3]
    assert second.server.rejected[3] == (
        "client 3's masked input failed authentication: altered, forged, or replayed from "
        "another session or round"
    )
    second.requests(second.signatures())
    total = second.server.unmask(second.responses())
    np.testing.assert_array_equal(total, _sum(inputs, [0, 1, 2, 4, 5]))


def test_a_masked_input_altered_on_the_way_is_rejected(by_hand):
    round_ = by_hand(SecAggConfig(6, threshold=3))
    inputs = _inputs(range(6))
    round_.keys()
    round_.shares()
    masked = round_.masked(inputs)
    altered = bytearray(masked[4])
    altered[-1] ^= 1  # one bit of its last word
    masked[4] = bytes(altered)
    round_.survivors(masked)
    assert round_.server.rejected[4].startswith("client 4's masked input failed authentication")
    round_.requests(round_.signatures())
    total = round_.server.unmask(round_.responses())
    np.testing.assert_array_equal(total, _sum(inputs, [0, 1, 2, 3, 5]))


def test_keys_or_signatures_replayed_from_another_round_are_rejected(by_hand):
    first, second = _two_rounds(by_hand)
    inputs = _inputs(range(6))
    first.run(inputs)
    old_keys = first.transcript[1]  # client 1's AdvertiseKeys of round 1
    assert AdvertiseKeys.from_bytes(old_keys).sender == 1
    up = {u: c.advertise_keys() for u, c in second.clients.items()}
    up[1] = old_keys
    second.down = second.server.collect_keys(up)
    assert "client 1's signature on its public keys does not verify" in second.server.rejected[1]
    del second.clients[1]
    second.shares()
    second.survivors(second.masked(inputs))
    signatures = second.signatures()
    old_signature = next(m for m in first.transcript if m[1] == ConsistencySignature.KIND)
    sender = ConsistencySignature.from_bytes(old_signature).sender
    signatures[sender] = old_signature
    second.requests(signatures)
    assert "signature on the survivor set does not verify" in second.server.rejected[sender]
    total = second.server.unmask(second.responses())
    np.testing.assert_array_equal(total, _sum(inputs, [0, 2, 3, 4, 5]))


@pytest.mark.parametrize(
    ("kind", "other"), [("round", {"round": 2}), ("session", {"session": b"another"})]
)
def test_a_share_ciphertext_opens_only_in_its_session_and_round(kind, other):
    secret = bytes(range(32))
    bound = {"session": b"session", "round": 1}
    ciphertext = primitives.encrypt_share(secret, 4, 5, b"shares", **bound)
    assert primitives.decrypt_share(secret, 4, 5, ciphertext, **bound) == b"shares"
    with pytest.raises(ProtocolError, match=r"client 4 sent to client 5 failed .* replayed"):
        primitives.decrypt_share(secret, 4, 5, ciphertext, **{**bound, **other})


def _corrupt(response: bytes, owner: int, delta: int = 1, kind: str = "seed_shares") -> bytes:
    message = UnmaskResponse.from_bytes(response)
    shares = tuple((u, s + delta if u == owner else s) for u, s in getattr(message, kind))
    return dataclasses.replace(message, **{kind: shares}).to_bytes()


def _to_unmasking(round_, inputs, drop=()):
    round_.keys()
    round_.shares()
    masked = round_.masked(inputs)
    round_.survivors({u: m for u, m in masked.items() if u not in drop})
    round_.requests(round_.signatures())
    return round_.responses()


def test_a_seed_share_off_by_one_names_its_sender_when_shares_allow(by_hand):
    """8 clients, t = 4: each seed has 7 shares back, t + 3: the odd one is found."""
    round_ = by_hand(SecAggConfig(8, threshold=4))
    responses = _to_unmasking(round_, _inputs(range(8)))
    responses[5] = _corrupt(responses[5], owner=2)
    with pytest.raises(
        ProtocolError,
        match=r"the share of client 2's self-mask seed that client 5 sent does not lie on the "
        "polynomial of the other 6: client 5 altered it",
    ):
        round_.server.unmask(responses)


def test_a_corrupt_key_share_of_a_dropped_client_names_its_sender(by_hand):
    round_ = by_hand(SecAggConfig(8, threshold=3))
    responses = _to_unmasking(round_, _inputs(range(8)), drop={6})
    responses[1] = _corrupt(responses[1], owner=6, delta=2**300, kind="key_shares")
    with pytest.raises(ProtocolError, match="masking key that client 1 sent does not lie"):
        round_.server.unmask(responses)


def test_with_one_share_beyond_t_a_corrupt_share_is_detected_but_not_attributed(by_hand):
    round_ = by_hand(SecAggConfig(6, threshold=4))  # 5 shares of each seed: t + 1
    responses = _to_unmasking(round_, _inputs(range(6)))
    responses[3] = _corrupt(responses[3], owner=0)
    with pytest.raises(
        ProtocolError,
        match=r"client 0's self-mask seed from clients \[1, 2, 3, 4, 5\] do not agree",
    ):
        round_.server.unmask(responses)


def test_with_exactly_t_shares_a_corrupt_share_still_stops_the_sum(by_hand):
    """t = 4 of 6 clients, one sending no shares: 4 shares of client 0's seed, exactly t.
    Nothing checks them against each other, and the share off by one rebuilds a seed
    off by -20 (the Lagrange coefficient of its point), but the seed does not match
    the commitment in client 0's signed masked input: the sum is refused, not wrong."""
    round_ = by_hand(SecAggConfig(6, threshold=4))
    responses = _to_unmasking(round_, _inputs(range(6)))
    del responses[5]
    responses[2] = _corrupt(responses[2], owner=0)
    with pytest.raises(
        ProtocolError, match=r"client 0's self-mask seed from clients \[1, 2, 3, 4\] do not"
    ):
        round_.server.unmask(responses)


def test_shares_the_server_did_not_ask_for_reject_their_sender(by_hand):
    round_ = by_hand(SecAggConfig(6, threshold=3))
    inputs = _inputs(range(6))
    responses = _to_unmasking(round_, inputs)
    message = UnmaskResponse.from_bytes(responses[4])
    responses[4] = dataclasses.replace(message, key_shares=((0, 1),)).to_bytes()
    total = round_.server.unmask(responses)
    assert round_.server.rejected == {4: "client 4: its shares are not those it was asked for"}
    np.testing.assert_array_equal(total, _sum(inputs, range(6)))


def test_masked_inputs_of_another_ring_or_sender_are_rejected_naming_the_client(by_hand):
    round_ = by_hand(SecAggConfig(10, threshold=3))
    inputs = _inputs(range(10))
    round_.keys()
    round_.shares()
    masked = round_.masked(inputs)
    narrow = MaskedInput.from_bytes(masked[2])
    narrow = dataclasses.replace(narrow, vector=narrow.vector.astype(np.uint32), ring_bits=32)
    masked[2] = narrow.to_bytes()
    masked[3], masked[4] = masked[4], masked[3]  # each claims to be the other
    masked[5] = masked[5][:-1]  # truncated
    round_.survivors(masked)
    assert round_.server.rejected == {
        2: "client 2: its input is 32-bit uint32, not 64-bit uint64",
        3: "client 3: its message claims to come from client 4",
        4: "client 4: its message claims to come from client 3",
        5: "client 5: MaskedInput message is truncated",
    }
    round_.requests(round_.signatures())
    total = round_.server.unmask(round_.responses())
    np.testing.assert_array_equal(total, _sum(inputs, [0, 1, 6, 7, 8, 9]))


def test_the_largest_ring_values_sum_exactly(by_hand):
    """Huge values are ring elements like any other: the sum is exact modulo 2^64."""
    top = {u: np.full(DIM, np.iinfo(np.uint64).max, np.uint64) for u in range(5)}
    total = by_hand(SecAggConfig(5, threshold=3)).run(top)
    np.testing.assert_array_equal(total, np.full(DIM, 2**64 - 5, np.uint64))
