"""A malicious server against the consistency check: split unmask requests fail.

The attack of issue 14: SecAgg+ with 40 clients, degree 18, t = 6. The server holds a
victim's masked input, asks 6 of its neighbours for their shares of the victim's
self-mask seed and 6 others for their shares of its masking key, and so recovers the
victim's input. Each honest client reveals only one share of the victim, so the
rule "never both shares of one client" at each client does not stop it; the signed
survivor set does, because every honest client that reveals anything saw the same
set, and a quorum of signatures on one set cannot be gathered for two sets.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfl.secagg import ProtocolError, SecAggConfig, harary_graph, primitives, shamir
from privfl.secagg.messages import (
    ConsistencySignature,
    MaskedInput,
    SurvivorSet,
    UnmaskRequest,
)

IDS = list(range(40))
VICTIM = 7
DIM = 33


@pytest.fixture
def attacked(by_hand):
    """The issue's round, run honestly up to the consistency check."""
    config = SecAggConfig(
        40, threshold=6, neighbours=harary_graph(IDS, 18, seed=0), corrupted=4, session=b"s"
    )
    round_ = by_hand(config)
    inputs = {u: np.random.default_rng(u).integers(0, 2**64, DIM, np.uint64) for u in IDS}
    round_.keys()
    round_.shares()
    masked = round_.masked(inputs)
    round_.survivors(masked)
    return round_, inputs, masked


def _holders(round_):
    around = sorted(round_.config.neighbours_of(VICTIM))
    assert len(around) == 18
    return around[:6], around[6:12]


def test_the_split_requests_would_unmask_the_victim(attacked):
    """What the attack gains: 6 seed shares and 6 key shares give the victim's input."""
    round_, inputs, masked = attacked
    seed_holders, key_holders = _holders(round_)
    point = {u: u + 1 for u in IDS}
    seed = shamir.reconstruct(
        {point[u]: round_.clients[u]._held[VICTIM][0] for u in seed_holders}, threshold=6
    ).to_bytes(32, "big")
    key = X25519PrivateKey.from_private_bytes(
        shamir.reconstruct(
            {point[u]: round_.clients[u]._held[VICTIM][1] for u in key_holders}, threshold=6
        ).to_bytes(32, "big")
    )
    recovered = MaskedInput.from_bytes(masked[VICTIM]).vector.copy()
    masks = [(seed, -1)]
    for v in sorted(round_.config.neighbours_of(VICTIM)):
        s_public = primitives.public_bytes(round_.clients[v]._s_key)
        agreed = primitives.mask_seed(primitives.agree(key, s_public))
        masks.append((agreed, -1 if v > VICTIM else 1))
    primitives.add_masks(recovered, masks)
    np.testing.assert_array_equal(recovered, inputs[VICTIM])


def test_key_shares_of_a_signed_survivor_are_refused(attacked):
    round_, _, _ = attacked
    requests = round_.requests(round_.signatures())
    seed_holders, key_holders = _holders(round_)
    for u in seed_holders:  # the honest request: the victim's seed share
        assert VICTIM in UnmaskRequest.from_bytes(requests[u]).seed_ids
        round_.clients[u].unmask(requests[u])
    for u in key_holders:
        honest = UnmaskRequest.from_bytes(requests[u])
        split = dataclasses.replace(
            honest,
            seed_ids=tuple(v for v in honest.seed_ids if v != VICTIM),
            key_ids=(*honest.key_ids, VICTIM),
        )
        with pytest.raises(
            ProtocolError,
            match=rf"client {u}: the server's unmask request .* key shares of \[{VICTIM}\], "
            "inside it: refusing",
        ):
            round_.clients[u].unmask(split.to_bytes())


def _split_views(round_):
    """20 clients, the key holders among them, are told U3' (without the victim); the
    other 20, the victim and the seed holders among them, U3 (with it). Each signs
    what it was told; returns the two sets, who was told U3', and each signature."""
    everyone = tuple(IDS)
    without = tuple(u for u in IDS if u != VICTIM)
    seed_holders, key_holders = _holders(round_)
    others = [u for u in IDS if u not in {VICTIM, *seed_holders, *key_holders}]
    told_dropped = set(key_holders) | set(others[: 20 - len(key_holders)])
    signatures = {}
    for u in IDS:
        view = without if u in told_dropped else everyone
        reply = round_.clients[u].consistency_check(SurvivorSet(view).to_bytes())
        signatures[u] = ConsistencySignature.from_bytes(reply).signature
    return everyone, without, told_dropped, signatures


def test_a_server_that_splits_the_survivor_set_reaches_no_quorum(attacked):
    round_, _, _ = attacked
    everyone, without, told_dropped, signatures = _split_views(round_)
    seed_holders, key_holders = _holders(round_)
    assert round_.config.quorum == 23
    for view, holders, asked in ((everyone, seed_holders, "seed"), (without, key_holders, "key")):
        signers = [u for u in IDS if (u in told_dropped) == (view == without)]
        assert len(signers) == 20  # each half: fewer than the quorum
        proof = tuple((u, round_.directory.key_of(u), signatures[u]) for u in signers)
        for u in holders:
            ids = ((VICTIM,), ()) if asked == "seed" else ((), (VICTIM,))
            request = UnmaskRequest(*ids, view, proof)
            with pytest.raises(ProtocolError, match=r"20 signatures .* fewer than the quorum 23"):
                round_.clients[u].unmask(request.to_bytes())


def test_signatures_on_the_other_view_do_not_count(attacked):
    round_, _, _ = attacked
    _, without, told_dropped, signatures = _split_views(round_)
    _, key_holders = _holders(round_)
    # The server passes off the signatures on U3 (with the victim) as ones on U3'.
    proof = tuple((u, round_.directory.key_of(u), signatures[u]) for u in without)
    request = UnmaskRequest((), (VICTIM,), without, proof)
    with pytest.raises(ProtocolError, match="signature on the survivor set does not verify"):
        round_.clients[key_holders[0]].unmask(request.to_bytes())
    # Nor may it show a client of the other half the set it did not sign.
    other = next(u for u in IDS if u not in told_dropped and u != VICTIM)
    with pytest.raises(ProtocolError, match="another survivor set than the one this client"):
        round_.clients[other].unmask(request.to_bytes())
