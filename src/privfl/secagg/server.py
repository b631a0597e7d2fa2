"""The server side of a secure-aggregation round: routes messages, then learns the sum.

The server (Bonawitz et al. 2017, CCS, with the consistency check of their actively
secure protocol; Bell et al. 2020, CCS) sees only public keys, ciphertexts it cannot
open, masked inputs, signatures and the shares it asks for. Each step takes the
messages that arrived (a map from sender id to bytes) and returns the messages to
send; a client missing from a step's input dropped out in that step:

1. :meth:`SecAggServer.collect_keys` -- ``AdvertiseKeys`` in, each live client gets its
   live neighbours' signed public keys (``U1``: clients whose keys arrived);
2. :meth:`SecAggServer.relay_shares` -- ``ShareKeys`` in, each client gets the
   ciphertexts addressed to it by clients of ``U2`` (whose shares arrived);
3. :meth:`SecAggServer.collect_masked_inputs` -- ``MaskedInput`` in (``U3``, the
   survivors whose authenticated input is in the sum), each survivor gets ``U3`` to
   sign;
4. :meth:`SecAggServer.collect_signatures` -- ``ConsistencySignature`` in (``U4``,
   the survivors that signed; at least the config's quorum), each signer is asked for
   its shares of the self-mask seeds of its neighbours in ``U3`` and of the masking
   keys of its neighbours in ``U2 - U3``, with ``U3`` and every signature on it;
5. :meth:`SecAggServer.unmask` -- ``UnmaskResponse`` in, the server checks that the
   shares of each secret lie on one polynomial (when more than t came back),
   reconstructs those secrets, checks each against its commitment (the seed's hash in
   the signed masked input, the masking key's public key), removes the self-masks of
   ``U3`` and the pairwise masks between ``U2 - U3`` and ``U3``, and returns
   ``sum_{u in U3} x_u``.

A client whose message the server cannot accept -- malformed, claiming another
sender, a signature or tag that does not verify (a forgery, or a replay from another
session or round), a masked input of another type or length than the others' -- is left out
of the round as if it had dropped in that phase, and ``SecAggServer.rejected``
names it with the reason. After every step each client still needed must have at
least t live neighbours (for the complete graph: at least t + 1 clients left), or
the round stops with :class:`SecAggAborted`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfl.errors import RoundAborted
from privfl.secagg import primitives, shamir
from privfl.secagg.client import (
    input_bytes,
    keys_statement,
    seed_commitment,
    share_point,
    survivors_statement,
)
from privfl.secagg.config import SecAggConfig
from privfl.secagg.encoding import reduce_ring
from privfl.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyBroadcast,
    MaskedInput,
    ProtocolError,
    ShareKeys,
    ShareRelay,
    SurvivorSet,
    UnmaskRequest,
    UnmaskResponse,
)
from privfl.secagg.signing import KeyDirectory, ids_bytes

PHASES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking")
"""The steps of a round, named by the message a client sends in each."""

_Message = TypeVar("_Message")


class SecAggAborted(RoundAborted):
    """Too few clients are left for secure aggregation to finish; the server learns no sum.

    A :class:`privfl.RoundAborted`, so the round protocol ends the round with the global
    model unchanged.

    :ivar phase: The step in which it happened, one of :data:`PHASES`.
    :ivar remaining: How many clients were still in the round.
    :ivar threshold: The threshold t (or, in the consistency check, the quorum).
    """

    def __init__(self, phase: str, remaining: int, threshold: int, detail: str) -> None:
        self.phase = phase
        self.remaining = remaining
        self.threshold = threshold
        what = "quorum is" if phase == "consistency_check" else "threshold is t ="
        super().__init__(
            f"secure aggregation aborted in phase {phase!r} with {remaining} clients left: "
            f"{detail}, and the {what} {threshold}"
        )


class SecAggServer:
    """The server of one round; call its five steps in order.

    :param config: The round's settings.
    :param directory: The clients' signing keys, as the PKI registered them.
    :ivar dropped: Phase -> the clients whose message of that phase never arrived.
    :ivar rejected: Client -> why the server refused its message (it is then out of
        the round from that phase on, as if it had dropped).
    """

    def __init__(self, config: SecAggConfig, *, directory: KeyDirectory) -> None:
        self.config = config
        self.directory = directory
        self.dropped: dict[str, list[int]] = {phase: [] for phase in PHASES}
        self.rejected: dict[int, str] = {}
        self._keys: dict[
            int, tuple[bytes, bytes, bytes, bytes]
        ] = {}  # U1: id -> AdvertiseKeys fields
        self._shared: dict[int, dict[int, bytes]] = {}  # U2: sender -> recipient -> ct
        self._inputs: dict[int, np.ndarray] = {}  # U3
        self._commitments: dict[int, bytes] = {}  # U3: id -> commitment to its seed
        self._signatures: dict[int, bytes] = {}  # U4: signer -> signature on U3
        self._requests: dict[int, UnmaskRequest] = {}  # what each signer was asked for
        self._round_key = X25519PrivateKey.generate()  # authenticates masked inputs
        self._step = 0

    def _enter(self, phase: str, messages: Mapping[int, bytes], expected: set[int]) -> None:
        current = PHASES[self._step] if self._step < len(PHASES) else "finished"
        if current != phase:
            raise ProtocolError(f"the server is in phase {current!r}, not {phase!r}")
        self._step += 1
        unexpected = set(messages) - expected
        if unexpected:
            raise ProtocolError(f"phase {phase!r}: messages from {sorted(unexpected)}, not live")
        self.dropped[phase] = sorted(expected - set(messages))

    def _accept(
        self,
        messages: Mapping[int, bytes],
        read: Callable[[bytes], _Message],
        check: Callable[[int, _Message], None],
    ) -> dict[int, _Message]:
        """The messages that parse, come from their sender and pass ``check``; each
        other sender is rejected with the reason."""
        accepted = {}
        for sender, data in messages.items():
            try:
                message = read(data)
                claimed = getattr(message, "sender", sender)
                if claimed != sender:
                    raise ProtocolError(f"its message claims to come from client {claimed}")
                check(sender, message)
            except ProtocolError as error:
                reason = str(error)
                if not reason.startswith((f"client {sender} ", f"client {sender}'")):
                    reason = f"client {sender}: {reason}"
                self.rejected[sender] = reason
                continue
            accepted[sender] = message
        return accepted

    def _require(self, phase: str, clients: set[int], alive: set[int], left: int) -> None:
        """Abort unless ``clients`` is not empty and each has t neighbours in ``alive``."""
        t = self.config.threshold
        if not clients:
            raise SecAggAborted(phase, left, t, "no client can finish the round")
        for client in sorted(clients):
            count = len(self.config.neighbours_of(client) & alive)
            if count < t:
                raise SecAggAborted(phase, left, t, f"client {client} has {count} live neighbours")

    def collect_keys(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Step 1: signed public keys in; each live client's :class:`KeyBroadcast` out."""
        self._enter("advertise_keys", messages, set(self.config.client_ids))

        def check(sender: int, message: AdvertiseKeys) -> None:
            self.directory.key_of(sender, message.verify_key)
            signed = keys_statement(self.config, sender, message.c_public, message.s_public)
            self.directory.verify(sender, message.signature, signed, "its public keys")

        for sender, message in self._accept(messages, AdvertiseKeys.from_bytes, check).items():
            self._keys[sender] = (
                message.c_public,
                message.s_public,
                message.verify_key,
                message.signature,
            )
        alive = set(self._keys)
        self._require("advertise_keys", alive, alive, len(alive))
        return {
            u: KeyBroadcast(
                tuple((v, *self._keys[v]) for v in sorted(self.config.neighbours_of(u) & alive)),
                primitives.public_bytes(self._round_key),
            ).to_bytes()
            for u in sorted(alive)
        }

    def relay_shares(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Step 2: encrypted shares in; each client's :class:`ShareRelay` out."""
        self._enter("share_keys", messages, set(self._keys))
        live = self._keys.keys()

        def check(sender: int, message: ShareKeys) -> None:
            recipients = [v for v, _ in message.ciphertexts]
            if len(set(recipients)) != len(recipients) or set(recipients) != (
                self.config.neighbours_of(sender) & live
            ):
                raise ProtocolError("it did not share with exactly its live neighbours")

        for sender, message in self._accept(messages, ShareKeys.from_bytes, check).items():
            self._shared[sender] = dict(message.ciphertexts)
        alive = set(self._shared)
        self._require("share_keys", alive, alive, len(alive))
        return {
            v: ShareRelay(
                tuple((u, self._shared[u][v]) for u in sorted(self.config.neighbours_of(v) & alive))
            ).to_bytes()
            for v in sorted(alive)
        }

    def collect_masked_inputs(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Step 3: signed masked inputs in; each survivor's :class:`SurvivorSet` out.

        Inputs of another dtype, or of another length than most inputs, are rejected.
        """
        self._enter("masked_input", messages, set(self._shared))
        dtype = self.config.dtype

        def check(sender: int, message: MaskedInput) -> None:
            if message.vector.dtype != dtype or message.ring_bits != self.config.ring_bits:
                raise ProtocolError(
                    f"its input is {message.ring_bits}-bit {message.vector.dtype}, not "
                    f"{self.config.ring_bits}-bit {dtype}"
                )
            primitives.check_input_tag(
                primitives.agree(self._round_key, self._keys[sender][0]),
                sender,
                message.commitment,
                input_bytes(message.vector),
                message.tag,
                session=self.config.session,
                round=self.config.round,
            )

        accepted = self._accept(messages, MaskedInput.from_bytes, check)
        sizes = Counter(m.vector.size for m in accepted.values())
        usual = sizes.most_common(1)[0][0] if sizes else 0
        for sender, message in accepted.items():
            if message.vector.size == usual:
                self._inputs[sender] = message.vector
                self._commitments[sender] = message.commitment
            else:
                self.rejected[sender] = (
                    f"client {sender}: its masked input has {message.vector.size} values, "
                    f"not {usual} as most others"
                )
        survivors = set(self._inputs)
        gone = set(self._shared) - survivors
        needed = survivors | {u for u in gone if self.config.neighbours_of(u) & survivors}
        self._require("masked_input", needed, survivors, len(survivors))
        survivor_set = SurvivorSet(tuple(sorted(survivors))).to_bytes()
        return dict.fromkeys(sorted(survivors), survivor_set)

    def collect_signatures(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Step 4: signatures on U3 in; each signer's :class:`UnmaskRequest` out."""
        self._enter("consistency_check", messages, set(self._inputs))
        survivors = tuple(sorted(self._inputs))
        survivor_ids = ids_bytes(survivors)  # what every signer signed

        def check(sender: int, message: ConsistencySignature) -> None:
            signed = survivors_statement(self.config, sender, survivor_ids)
            self.directory.verify(sender, message.signature, signed, "the survivor set")

        for sender, message in self._accept(
            messages, ConsistencySignature.from_bytes, check
        ).items():
            self._signatures[sender] = message.signature
        signers = set(self._signatures)
        quorum = self.config.quorum
        if len(signers) < quorum:
            raise SecAggAborted(
                "consistency_check",
                len(signers),
                quorum,
                f"{len(signers)} clients signed the survivor set",
            )
        gone = set(self._shared) - set(survivors)
        needed = set(survivors) | {u for u in gone if self.config.neighbours_of(u) & signers}
        self._require("consistency_check", needed, signers, len(signers))
        signatures = tuple(
            (u, self.directory.key_of(u), self._signatures[u]) for u in sorted(signers)
        )
        for v in sorted(signers):
            self._requests[v] = UnmaskRequest(
                tuple(sorted(self.config.neighbours_of(v) & set(survivors))),
                tuple(sorted(self.config.neighbours_of(v) & gone)),
                survivors,
                signatures,
            )
        return {v: request.to_bytes() for v, request in self._requests.items()}

    def unmask(self, messages: Mapping[int, bytes]) -> np.ndarray:
        """Step 5: shares in; the sum of the survivors' inputs out.

        :raises ProtocolError: when the shares of one secret contradict each other,
            naming the client that sent the odd share where more than t shares allow
            telling which (see :func:`~privfl.secagg.shamir.off_polynomial`), else the
            clients among which a share is corrupt.
        """
        self._enter("unmasking", messages, set(self._signatures))
        shares: dict[str, dict[int, dict[int, int]]] = {"seed": {}, "key": {}}  # owner -> point

        def check(sender: int, message: UnmaskResponse) -> None:
            asked = self._requests[sender]
            if [u for u, _ in message.seed_shares] != list(asked.seed_ids) or [
                u for u, _ in message.key_shares
            ] != list(asked.key_ids):
                raise ProtocolError("its shares are not those it was asked for")

        for sender, message in self._accept(messages, UnmaskResponse.from_bytes, check).items():
            for kind, pairs in (("seed", message.seed_shares), ("key", message.key_shares)):
                for owner, share in pairs:
                    shares[kind].setdefault(owner, {})[share_point(sender)] = share
        survivors = set(self._inputs)
        gone = {
            u for u in set(self._shared) - survivors if self.config.neighbours_of(u) & survivors
        }
        t = self.config.threshold
        for owner in sorted(survivors | gone):
            count = len(shares["seed" if owner in survivors else "key"].get(owner, {}))
            if count < t:
                raise SecAggAborted(
                    "unmasking", len(messages), t, f"client {owner} has {count} shares back"
                )
        total = np.zeros(next(iter(self._inputs.values())).size, dtype=self.config.dtype)
        masks = []
        for u in sorted(survivors):
            np.add(total, self._inputs[u], out=total)
            seed = _secret(shares["seed"][u], t, u, "self-mask seed")
            if seed_commitment(self.config, u, seed) != self._commitments[u]:
                raise ProtocolError(_corrupt(shares["seed"][u], u, "self-mask seed"))
            masks.append((seed, -1))
        for u in sorted(gone):
            secret = _secret(shares["key"][u], t, u, "masking key")
            key = X25519PrivateKey.from_private_bytes(secret)
            if primitives.public_bytes(key) != self._keys[u][1]:
                raise ProtocolError(_corrupt(shares["key"][u], u, "masking key"))
            for v in sorted(self.config.neighbours_of(u) & survivors):
                # v added sign(v, u) * PRG(s_vu); take it away again.
                seed = primitives.mask_seed(primitives.agree(key, self._keys[v][1]))
                masks.append((seed, -1 if v < u else 1))
        primitives.add_masks(total, masks)
        reduce_ring(total, self.config.ring_bits)
        return total


def _secret(shares: dict[int, int], t: int, owner: int, what: str) -> bytes:
    """The 32-byte secret of ``owner`` from its shares, after checking they agree."""
    odd = shamir.off_polynomial(shares, threshold=t)
    if len(odd) == 1:
        sender = odd[0] - 1  # share_point(sender) = sender + 1
        raise ProtocolError(
            f"the share of client {owner}'s {what} that client {sender} sent does not lie on "
            f"the polynomial of the other {len(shares) - 1}: client {sender} altered it "
            f"(or client {owner} dealt it so)"
        )
    if odd:
        raise ProtocolError(_corrupt(shares, owner, what))
    points = tuple(sorted(shares)[:t])
    value = shamir.combine([shares[x] for x in points], shamir.lagrange_at_zero(points))
    if value.bit_length() > 8 * primitives.KEY_BYTES:
        raise ProtocolError(_corrupt(shares, owner, what))
    return value.to_bytes(primitives.KEY_BYTES, "big")


def _corrupt(shares: dict[int, int], owner: int, what: str) -> str:
    senders = sorted(x - 1 for x in shares)
    return (
        f"the shares of client {owner}'s {what} from clients {senders} do not agree: at "
        f"least one is corrupt, and {len(shares)} shares cannot tell which (it takes more "
        "than the threshold, and two more to name the sender)"
    )
