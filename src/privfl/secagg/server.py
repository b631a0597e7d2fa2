"""The server side of a secure-aggregation round: routes messages, then learns the sum.

The server (Bonawitz et al. 2017, CCS; Bell et al. 2020, CCS) sees only
public keys, ciphertexts it cannot open, masked inputs and the shares it asks for. Each
step takes the messages that arrived (a map from sender id to bytes) and returns the
messages to send; a client missing from a step's input dropped out in that step:

1. :meth:`SecAggServer.collect_keys` -- ``AdvertiseKeys`` in, each live client gets its
   live neighbours' public keys (``U1``: clients whose keys arrived);
2. :meth:`SecAggServer.relay_shares` -- ``ShareKeys`` in, each client gets the
   ciphertexts addressed to it by clients of ``U2`` (whose shares arrived);
3. :meth:`SecAggServer.collect_masked_inputs` -- ``MaskedInput`` in (``U3``, the
   survivors whose input is in the sum), each survivor is asked for its shares of the
   self-mask seeds of its surviving neighbours and of the masking keys of its
   neighbours in ``U2 - U3``;
4. :meth:`SecAggServer.unmask` -- ``UnmaskResponse`` in, the server reconstructs
   those secrets from t shares each, removes the self-masks of ``U3`` and the pairwise
   masks between ``U2 - U3`` and ``U3``, and returns ``sum_{u in U3} x_u``.

After every step each client still needed must have at least t live neighbours (for
the complete graph: at least t + 1 clients left), or the round stops with
:class:`SecAggAborted`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfl.errors import RoundAborted
from privfl.secagg import primitives, shamir
from privfl.secagg.client import share_point
from privfl.secagg.config import SecAggConfig
from privfl.secagg.messages import (
    AdvertiseKeys,
    KeyBroadcast,
    MaskedInput,
    ProtocolError,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
)

PHASES = ("advertise_keys", "share_keys", "masked_input", "unmasking")
"""The steps of a round, named by the message a client sends in each."""


class SecAggAborted(RoundAborted):
    """Too few clients are left for secure aggregation to finish; the server learns no sum.

    A :class:`privfl.RoundAborted`, so the round protocol ends the round with the global
    model unchanged.

    :ivar phase: The step in which it happened, one of :data:`PHASES`.
    :ivar remaining: How many clients were still in the round.
    :ivar threshold: The threshold t.
    """

    def __init__(self, phase: str, remaining: int, threshold: int, detail: str) -> None:
        self.phase = phase
        self.remaining = remaining
        self.threshold = threshold
        super().__init__(
            f"secure aggregation aborted in phase {phase!r} with {remaining} clients left: "
            f"{detail}, and the threshold is t = {threshold}"
        )


class SecAggServer:
    """The server of one round; call its four steps in order."""

    def __init__(self, config: SecAggConfig) -> None:
        self.config = config
        self.dropped: dict[str, list[int]] = {phase: [] for phase in PHASES}
        self._keys: dict[int, tuple[bytes, bytes]] = {}  # U1: id -> (c_public, s_public)
        self._shared: dict[int, dict[int, bytes]] = {}  # U2: sender -> recipient -> ct
        self._inputs: dict[int, np.ndarray] = {}  # U3
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
        """Step 1: public keys in; each live client's :class:`KeyBroadcast` out."""
        self._enter("advertise_keys", messages, set(self.config.client_ids))
        for sender, data in messages.items():
            message = AdvertiseKeys.from_bytes(data)
            _check_sender(message.sender, sender)
            self._keys[sender] = (message.c_public, message.s_public)
        alive = set(self._keys)
        self._require("advertise_keys", alive, alive, len(alive))
        return {
            u: KeyBroadcast(
                tuple((v, *self._keys[v]) for v in sorted(self.config.neighbours_of(u) & alive))
            ).to_bytes()
            for u in sorted(alive)
        }

    def relay_shares(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Step 2: encrypted shares in; each client's :class:`ShareRelay` out."""
        self._enter("share_keys", messages, set(self._keys))
        for sender, data in messages.items():
            message = ShareKeys.from_bytes(data)
            _check_sender(message.sender, sender)
            recipients = {v: c for v, c in message.ciphertexts}
            if recipients.keys() != self.config.neighbours_of(sender) & self._keys.keys():
                raise ProtocolError(f"client {sender} did not share with its live neighbours")
            self._shared[sender] = recipients
        alive = set(self._shared)
        self._require("share_keys", alive, alive, len(alive))
        return {
            v: ShareRelay(
                tuple((u, self._shared[u][v]) for u in sorted(self.config.neighbours_of(v) & alive))
            ).to_bytes()
            for v in sorted(alive)
        }

    def collect_masked_inputs(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Step 3: masked inputs in; each survivor's :class:`UnmaskRequest` out."""
        self._enter("masked_input", messages, set(self._shared))
        for sender, data in messages.items():
            message = MaskedInput.from_bytes(data)
            _check_sender(message.sender, sender)
            if message.vector.dtype != self.config.dtype:
                raise ProtocolError(f"client {sender}'s input is not {self.config.dtype}")
            self._inputs[sender] = message.vector
        sizes = Counter(v.size for v in self._inputs.values())
        if len(sizes) > 1:
            usual = sizes.most_common(1)[0][0]
            odd = sorted(u for u, v in self._inputs.items() if v.size != usual)
            raise ProtocolError(
                f"the masked inputs of clients {odd} differ in length from the others' {usual}"
            )
        survivors = set(self._inputs)
        gone = set(self._shared) - survivors
        needed = survivors | {u for u in gone if self.config.neighbours_of(u) & survivors}
        self._require("masked_input", needed, survivors, len(survivors))
        return {
            v: UnmaskRequest(
                tuple(sorted(self.config.neighbours_of(v) & survivors)),
                tuple(sorted(self.config.neighbours_of(v) & gone)),
            ).to_bytes()
            for v in sorted(survivors)
        }

    def unmask(self, messages: Mapping[int, bytes]) -> np.ndarray:
        """Step 4: shares in; the sum of the survivors' inputs out."""
        self._enter("unmasking", messages, set(self._inputs))
        seed_shares: dict[int, dict[int, int]] = {}  # owner -> point -> share
        key_shares: dict[int, dict[int, int]] = {}
        for sender, data in messages.items():
            message = UnmaskResponse.from_bytes(data)
            _check_sender(message.sender, sender)
            for owner, share in message.seed_shares:
                seed_shares.setdefault(owner, {})[share_point(sender)] = share
            for owner, share in message.key_shares:
                key_shares.setdefault(owner, {})[share_point(sender)] = share
        survivors = set(self._inputs)
        gone = {
            u for u in set(self._shared) - survivors if self.config.neighbours_of(u) & survivors
        }
        t = self.config.threshold
        for owner in sorted(survivors | gone):
            count = len((seed_shares if owner in survivors else key_shares).get(owner, {}))
            if count < t:
                raise SecAggAborted(
                    "unmasking", len(messages), t, f"client {owner} has {count} shares back"
                )
        coefficients: dict[tuple[int, ...], list[int]] = {}  # Lagrange, by set of points

        def secret(shares: dict[int, int]) -> bytes:
            points = tuple(sorted(shares)[:t])
            if points not in coefficients:
                coefficients[points] = shamir.lagrange_at_zero(points)
            value = shamir.combine([shares[x] for x in points], coefficients[points])
            if value.bit_length() > 8 * primitives.KEY_BYTES:
                raise ProtocolError("shares reconstruct no 32-byte secret: some are corrupt")
            return value.to_bytes(primitives.KEY_BYTES, "big")

        total = np.zeros(next(iter(self._inputs.values())).size, dtype=self.config.dtype)
        masks = []
        for u in sorted(survivors):
            np.add(total, self._inputs[u], out=total)
            masks.append((secret(seed_shares[u]), -1))
        for u in sorted(gone):
            key = X25519PrivateKey.from_private_bytes(secret(key_shares[u]))
            if primitives.public_bytes(key) != self._keys[u][1]:
                raise ProtocolError(f"the key shares of client {u} do not match its public key")
            for v in sorted(self.config.neighbours_of(u) & survivors):
                # v added sign(v, u) * PRG(s_vu); take it away again.
                seed = primitives.mask_seed(primitives.agree(key, self._keys[v][1]))
                masks.append((seed, -1 if v < u else 1))
        primitives.add_masks(total, masks)
        return total


def _check_sender(claimed: int, actual: int) -> None:
    if claimed != actual:
        raise ProtocolError(f"a message from client {actual} claims to come from {claimed}")
