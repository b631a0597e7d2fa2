"""The client side of a secure-aggregation round: four steps, bytes in and bytes out.

A client (Bonawitz et al. 2017, CCS; Bell et al. 2020, CCS):

1. :meth:`SecAggClient.advertise_keys` draws two X25519 key pairs, the c-keys (for
   encrypting shares) and the s-keys (for agreeing pairwise masks), and sends the
   public halves;
2. :meth:`SecAggClient.share_keys` draws its self-mask seed ``b_u``, Shamir-shares
   ``b_u`` and its s-key secret ``s_u`` among its live neighbours with threshold t, and
   encrypts each neighbour's pair of shares for that neighbour alone;
3. :meth:`SecAggClient.masked_input` decrypts and keeps the shares it received and sends
   ``y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv)`` over the neighbours ``v`` that
   shared with it, where ``s_uv`` is agreed from the s-keys and ``sign(u, v)`` is +1
   when ``u < v`` and -1 otherwise, so that the pairwise masks cancel in the sum;
4. :meth:`SecAggClient.unmask` reveals, for each neighbour, either its share of
   ``b_v`` (v sent its masked input) or its share of ``s_v`` (v dropped) -- never both,
   as both would let the server unmask v's input.

A client checks everything it is told: the keys it receives come from its own
neighbours and are distinct, shares authenticate (otherwise :class:`ProtocolError`
names the sender: a tampered or misrouted share stops the client rather than being
skipped, since only a misbehaving server or network can cause it), and the server's
requests concern clients whose shares it holds, at least t of its neighbours survived,
and no client is named in both lists. The steps must come in order, once each.
"""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfl.secagg import primitives, shamir
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

_STEPS = ("advertise_keys", "share_keys", "masked_input", "unmask")


def share_point(client: int) -> int:
    """The Shamir evaluation point of ``client``'s shares (ids start at 0, points at 1)."""
    return client + 1


class SecAggClient:
    """One client of one round. Its secrets never leave the object except as shares."""

    def __init__(self, client_id: int, config: SecAggConfig) -> None:
        if client_id not in config.client_ids:
            raise ProtocolError(f"client {client_id} is not in this round")
        self.client_id = client_id
        self.config = config
        self._neighbours = config.neighbours_of(client_id)
        self._done = 0  # steps taken
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._seed = b""  # b_u, drawn in share_keys
        self._peers: dict[int, tuple[bytes, bytes]] = {}  # id -> (c_public, s_public)
        self._c_secrets: dict[int, bytes] = {}  # id -> c-key agreement, for its shares
        self._held: dict[int, tuple[int, int]] = {}  # id -> (share of b_id, share of s_id)

    def _step(self, name: str) -> None:
        expected = _STEPS[self._done] if self._done < len(_STEPS) else "nothing"
        if name != expected:
            raise ProtocolError(f"client {self.client_id} was asked to {name}; expected {expected}")
        self._done += 1

    def advertise_keys(self) -> bytes:
        """Round 0: the public c-key and s-key."""
        self._step("advertise_keys")
        return AdvertiseKeys(
            self.client_id,
            primitives.public_bytes(self._c_key),
            primitives.public_bytes(self._s_key),
        ).to_bytes()

    def share_keys(self, broadcast: bytes) -> bytes:
        """Round 1: encrypted shares of ``b_u`` and ``s_u`` for each live neighbour."""
        self._step("share_keys")
        keys = KeyBroadcast.from_bytes(broadcast).keys
        ids = [u for u, _, _ in keys]
        if len(set(ids)) != len(ids) or not set(ids) <= self._neighbours:
            raise ProtocolError(
                f"client {self.client_id} got keys of {sorted(ids)}, not of distinct neighbours"
            )
        publics = [c for _, c, _ in keys] + [s for _, _, s in keys]
        publics += [primitives.public_bytes(self._c_key), primitives.public_bytes(self._s_key)]
        if len(set(publics)) != len(publics):
            raise ProtocolError(f"client {self.client_id} got repeated public keys")
        self._require_threshold(len(ids), "neighbours advertised keys")
        self._peers = {u: (c, s) for u, c, s in keys}
        self._seed = secrets.token_bytes(primitives.KEY_BYTES)
        xs = [share_point(u) for u in ids]
        t = self.config.threshold
        seed_shares = shamir.split(int.from_bytes(self._seed, "big"), threshold=t, xs=xs)
        key_secret = int.from_bytes(primitives.private_bytes(self._s_key), "big")
        key_shares = shamir.split(key_secret, threshold=t, xs=xs)
        self._c_secrets = {u: primitives.agree(self._c_key, c) for u, c, _ in keys}
        ciphertexts = tuple(
            (
                u,
                primitives.encrypt_share(
                    self._c_secrets[u], self.client_id, u, shamir.to_bytes(b) + shamir.to_bytes(s)
                ),
            )
            for u, b, s in zip(ids, seed_shares, key_shares, strict=True)
        )
        return ShareKeys(self.client_id, ciphertexts).to_bytes()

    def masked_input(self, relay: bytes, values: np.ndarray, *, overwrite: bool = False) -> bytes:
        """Round 2: keep the shares in ``relay``; send ``values`` under the masks.

        :param relay: The server's :class:`ShareRelay` for this client.
        :param values: The encoded input, a 1-D ring vector of the config's dtype.
        :param overwrite: Mask ``values`` in place rather than a copy (for a caller that
            needs them no more: it saves a copy of the vector).
        """
        self._step("masked_input")
        values = np.asarray(values)
        if values.ndim != 1 or values.dtype != self.config.dtype:
            raise ProtocolError(
                f"client {self.client_id}'s input must be a 1-D {self.config.dtype} vector, "
                f"not {values.ndim}-D {values.dtype}"
            )
        ciphertexts = ShareRelay.from_bytes(relay).ciphertexts
        senders = [u for u, _ in ciphertexts]
        if len(set(senders)) != len(senders) or not set(senders) <= self._peers.keys():
            raise ProtocolError(
                f"client {self.client_id} got shares from {sorted(senders)}, "
                "not from distinct neighbours it sent keys to"
            )
        self._require_threshold(len(senders), "neighbours shared their keys")
        size = shamir.SHARE_BYTES
        for u, ciphertext in ciphertexts:
            plaintext = primitives.decrypt_share(self._c_secrets[u], u, self.client_id, ciphertext)
            if len(plaintext) != 2 * size:
                raise ProtocolError(f"the shares from client {u} have {len(plaintext)} bytes")
            try:
                held = (shamir.from_bytes(plaintext[:size]), shamir.from_bytes(plaintext[size:]))
            except ValueError as error:
                raise ProtocolError(f"bad share from client {u}: {error}") from error
            self._held[u] = held
        masks = [(self._seed, 1)] + [
            (
                primitives.mask_seed(primitives.agree(self._s_key, self._peers[u][1])),
                1 if self.client_id < u else -1,
            )
            for u in senders
        ]
        masked = values if overwrite else values.copy()
        primitives.add_masks(masked, masks)
        return MaskedInput(self.client_id, masked).to_bytes()

    def unmask(self, request: bytes) -> bytes:
        """Round 3: the shares the server asks for, after checking that it may have them."""
        self._step("unmask")
        message = UnmaskRequest.from_bytes(request)
        seed_ids, key_ids = set(message.seed_ids), set(message.key_ids)
        both = seed_ids & key_ids
        if both:
            raise ProtocolError(
                f"client {self.client_id} was asked for both the self-mask seed share and "
                f"the masking-key share of clients {sorted(both)}: refusing, as together "
                "they would unmask those clients' inputs"
            )
        unknown = (seed_ids | key_ids) - self._held.keys()
        if (
            unknown
            or len(seed_ids) != len(message.seed_ids)
            or len(key_ids) != len(message.key_ids)
        ):
            raise ProtocolError(
                f"client {self.client_id} was asked for shares of {sorted(unknown)} that it "
                "does not hold, or for one share twice"
            )
        self._require_threshold(len(seed_ids), "neighbours sent their masked inputs")
        return UnmaskResponse(
            self.client_id,
            tuple((u, self._held[u][0]) for u in message.seed_ids),
            tuple((u, self._held[u][1]) for u in message.key_ids),
        ).to_bytes()

    def _require_threshold(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise ProtocolError(
                f"client {self.client_id}: only {count} {what}, fewer than the threshold "
                f"{self.config.threshold}; refusing to go on"
            )
