"""The client side of a secure-aggregation round: five steps, bytes in and bytes out.

A client (Bonawitz et al. 2017, CCS, with the consistency check of their actively
secure protocol; Bell et al. 2020, CCS, for the sparse graph):

1. :meth:`SecAggClient.advertise_keys` draws two X25519 key pairs, the c-keys (for
   encrypting shares) and the s-keys (for agreeing pairwise masks), and sends the
   public halves, signed with its long-term Ed25519 key for this session and round;
2. :meth:`SecAggClient.share_keys` checks its neighbours' signed keys against its
   :class:`~privfl.secagg.signing.KeyDirectory`, draws its self-mask seed ``b_u``,
   Shamir-shares ``b_u`` and its s-key secret ``s_u`` among its live neighbours with
   threshold t, and encrypts each neighbour's pair of shares for that neighbour alone;
3. :meth:`SecAggClient.masked_input` decrypts and keeps the shares it received and sends
   ``y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv)`` (modulo ``2^k``, the ring
   of the round) over the neighbours ``v`` that
   shared with it, where ``s_uv`` is agreed from the s-keys and ``sign(u, v)`` is +1
   when ``u < v`` and -1 otherwise, so that the pairwise masks cancel in the sum, with
   a commitment to ``b_u``, both under a GMAC tag keyed by the agreement of its
   c-key and the server's key of the round, for this session and round;
4. :meth:`SecAggClient.consistency_check` signs the survivor set U3 the server sends
   (the clients whose masked input it holds); it signs one set per round;
5. :meth:`SecAggClient.unmask` checks that at least a quorum of clients signed the
   same U3 (:attr:`~privfl.secagg.config.SecAggConfig.quorum`), then reveals, for each
   neighbour, its share of ``b_v`` if ``v`` is in U3, or its share of ``s_v`` if not --
   never both. Since every honest client that reveals anything saw the same U3, the
   server cannot collect the seed shares of a client from some neighbours and its key
   shares from others, which would unmask its input.

A client checks everything it is told: the keys it receives come from its own
neighbours, are distinct and signed by their owners, shares authenticate (otherwise
:class:`ProtocolError` names the sender: a tampered, misrouted or replayed share stops
the client rather than being skipped, since only a misbehaving server or network can
cause it), and the server's requests agree with the signed survivor set, concern
clients whose shares it holds, leave it at least t surviving neighbours, and name no
client in both lists. The steps must come in order, once each.
"""

from __future__ import annotations

import secrets

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privfl.secagg import primitives, shamir
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
from privfl.secagg.signing import KeyDirectory, digest, ids_bytes, statement, verify_key

_STEPS = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")


def keys_statement(config: SecAggConfig, client: int, c_public: bytes, s_public: bytes) -> bytes:
    """What ``client`` signs in :class:`AdvertiseKeys`: its two public keys."""
    return statement("keys", config.session, config.round, client, c_public, s_public)


def input_bytes(vector: np.ndarray) -> memoryview:
    """What the tag of a :class:`MaskedInput` covers with its seed commitment: the
    vector as the little-endian words it travels as (read in place, not copied)."""
    return MaskedInput.words(vector).data.cast("B")


def seed_commitment(config: SecAggConfig, client: int, seed: bytes) -> bytes:
    """SHA-256 of ``client``'s self-mask seed in this session and round.

    The server rebuilds the seed from t shares; with exactly t shares nothing checks
    them against each other, and a share off by a little rebuilds a seed off by a
    little (the Lagrange coefficients of small points are small), so the server checks
    the seed against this commitment instead. The seed is 32 random bytes, so the
    hash reveals nothing about it.
    """
    return digest(statement("seed", config.session, config.round, client, seed))


def survivors_statement(config: SecAggConfig, client: int, survivors: bytes) -> bytes:
    """What ``client`` signs in the consistency check: the survivor set U3, as
    :func:`~privfl.secagg.signing.ids_bytes` of its sorted ids (written once for all
    the signers of a set)."""
    return statement("survivors", config.session, config.round, client, survivors)


def _vector_of(message: bytearray | memoryview, values: np.ndarray) -> bool:
    """Whether ``values`` is the whole vector of ``message``, a
    :meth:`~privfl.secagg.messages.MaskedInput.buffer`."""
    start = np.frombuffer(message, np.uint8).ctypes.data + MaskedInput.HEADER_BYTES
    size = len(message) - MaskedInput.HEADER_BYTES
    return bool(values.ctypes.data == start and values.nbytes == size and values.flags.c_contiguous)


def share_point(client: int) -> int:
    """The Shamir evaluation point of ``client``'s shares (ids start at 0, points at 1)."""
    return client + 1


class SecAggClient:
    """One client of one round. Its secrets never leave the object except as shares.

    :param client_id: The client's id.
    :param config: The round's settings.
    :param signing_key: The client's long-term Ed25519 key, registered in ``directory``.
    :param directory: The signing keys the client trusts (the PKI's view).
    """

    def __init__(
        self,
        client_id: int,
        config: SecAggConfig,
        *,
        signing_key: Ed25519PrivateKey,
        directory: KeyDirectory,
    ) -> None:
        if client_id not in config.client_ids:
            raise ProtocolError(f"client {client_id} is not in this round")
        self.client_id = client_id
        self.config = config
        self._signing_key = signing_key
        self._directory = directory
        directory.key_of(client_id, verify_key(signing_key))  # its own key, as registered
        self._neighbours = config.neighbours_of(client_id)
        self._done = 0  # steps taken
        self._c_key = X25519PrivateKey.generate()
        self._s_key = X25519PrivateKey.generate()
        self._seed = b""  # b_u, drawn in share_keys
        self._peers: dict[int, tuple[bytes, bytes]] = {}  # id -> (c_public, s_public)
        self._c_secrets: dict[int, bytes] = {}  # id -> c-key agreement, for its shares
        self._held: dict[int, tuple[int, int]] = {}  # id -> (share of b_id, share of s_id)
        self._survivors: tuple[int, ...] = ()  # the U3 it signed
        self._server_public = b""  # the server's X25519 key of the round

    def _step(self, name: str) -> None:
        expected = _STEPS[self._done] if self._done < len(_STEPS) else "nothing"
        if name != expected:
            raise ProtocolError(f"client {self.client_id} was asked to {name}; expected {expected}")
        self._done += 1

    def advertise_keys(self) -> bytes:
        """Round 0: the public c-key and s-key, signed."""
        self._step("advertise_keys")
        c_public, s_public = (
            primitives.public_bytes(self._c_key),
            primitives.public_bytes(self._s_key),
        )
        signed = keys_statement(self.config, self.client_id, c_public, s_public)
        return AdvertiseKeys(
            self.client_id,
            c_public,
            s_public,
            verify_key(self._signing_key),
            self._signing_key.sign(signed),
        ).to_bytes()

    def share_keys(self, broadcast: bytes) -> bytes:
        """Round 1: encrypted shares of ``b_u`` and ``s_u`` for each live neighbour."""
        self._step("share_keys")
        message = KeyBroadcast.from_bytes(broadcast)
        keys, self._server_public = message.keys, message.server_public
        ids = [u for u, *_ in keys]
        if len(set(ids)) != len(ids) or not set(ids) <= self._neighbours:
            raise ProtocolError(
                f"client {self.client_id} got keys of {sorted(ids)}, not of distinct neighbours"
            )
        for u, c, s, key, signature in keys:
            self._directory.key_of(u, key)
            self._directory.verify(
                u, signature, keys_statement(self.config, u, c, s), "its public keys"
            )
        publics = [c for _, c, *_ in keys] + [s for _, _, s, *_ in keys]
        publics += [primitives.public_bytes(self._c_key), primitives.public_bytes(self._s_key)]
        if len(set(publics)) != len(publics):
            raise ProtocolError(f"client {self.client_id} got repeated public keys")
        self._require_threshold(len(ids), "neighbours advertised keys")
        self._peers = {u: (c, s) for u, c, s, *_ in keys}
        self._seed = secrets.token_bytes(primitives.KEY_BYTES)
        xs = [share_point(u) for u in ids]
        t = self.config.threshold
        seed_shares = shamir.split(int.from_bytes(self._seed, "big"), threshold=t, xs=xs)
        key_secret = int.from_bytes(primitives.private_bytes(self._s_key), "big")
        key_shares = shamir.split(key_secret, threshold=t, xs=xs)
        self._c_secrets = {u: primitives.agree(self._c_key, c) for u, (c, _) in self._peers.items()}
        ciphertexts = tuple(
            (
                u,
                primitives.encrypt_share(
                    self._c_secrets[u],
                    self.client_id,
                    u,
                    shamir.to_bytes(b) + shamir.to_bytes(s),
                    session=self.config.session,
                    round=self.config.round,
                ),
            )
            for u, b, s in zip(ids, seed_shares, key_shares, strict=True)
        )
        return ShareKeys(self.client_id, ciphertexts).to_bytes()

    def masked_input(
        self,
        relay: bytes,
        values: np.ndarray,
        *,
        overwrite: bool = False,
        message: bytearray | memoryview | None = None,
    ) -> bytes | bytearray | memoryview:
        """Round 2: keep the shares in ``relay``; send ``values`` under the masks.

        :param relay: The server's :class:`ShareRelay` for this client.
        :param values: The encoded input, a 1-D ring vector of the config's dtype, its
            values below ``2^ring_bits``.
        :param overwrite: Mask ``values`` in place rather than a copy (for a caller that
            needs them no more: it saves a copy of the vector).
        :param message: The :meth:`~privfl.secagg.messages.MaskedInput.buffer` whose
            vector ``values`` is, in a 32- or 64-bit ring: ``values`` are masked in place
            and the message is returned, sealed, without a copy of the vector.
        """
        self._step("masked_input")
        values = np.asarray(values)
        if values.ndim != 1 or values.dtype != self.config.dtype:
            raise ProtocolError(
                f"client {self.client_id}'s input must be a 1-D {self.config.dtype} vector, "
                f"not {values.ndim}-D {values.dtype}"
            )
        if message is not None and (
            self.config.ring_bits != 8 * values.dtype.itemsize or not _vector_of(message, values)
        ):
            raise ProtocolError(
                f"client {self.client_id}'s input is not the vector of a message buffer "
                f"of its {self.config.ring_bits}-bit ring"
            )
        bits = self.config.ring_bits
        if bits < values.dtype.itemsize * 8 and values.size and int(values.max()) >> bits:
            raise ProtocolError(
                f"client {self.client_id}'s input has a value of {int(values.max())}, "
                f"outside the ring Z_2^{bits}"
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
            plaintext = primitives.decrypt_share(
                self._c_secrets[u],
                u,
                self.client_id,
                ciphertext,
                session=self.config.session,
                round=self.config.round,
            )
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
        masked = values if overwrite or message is not None else values.copy()
        primitives.add_masks(masked, masks)
        reduce_ring(masked, self.config.ring_bits)  # masks, like inputs, live in Z_2^k
        commitment = seed_commitment(self.config, self.client_id, self._seed)
        tag = primitives.input_tag(
            primitives.agree(self._c_key, self._server_public),
            self.client_id,
            commitment,
            input_bytes(masked),
            session=self.config.session,
            round=self.config.round,
        )
        if message is not None:
            return MaskedInput.seal(message, self.client_id, tag, commitment, self.config.ring_bits)
        return MaskedInput(
            self.client_id, masked, tag, commitment, self.config.ring_bits
        ).to_bytes()

    def consistency_check(self, survivor_set: bytes) -> bytes:
        """Round 3: sign the survivor set U3 the server sends, after checking it."""
        self._step("consistency_check")
        survivors = SurvivorSet.from_bytes(survivor_set).survivors
        if list(survivors) != sorted(set(survivors)) or not set(survivors) <= set(
            self.config.client_ids
        ):
            raise ProtocolError(
                f"client {self.client_id} got a survivor set that is not a sorted set of "
                "the round's clients"
            )
        if self.client_id not in survivors:
            raise ProtocolError(
                f"client {self.client_id} sent its masked input but is not in the survivor set"
            )
        self._require_threshold(len(survivors), "clients survived")
        self._survivors = survivors
        signed = survivors_statement(self.config, self.client_id, ids_bytes(survivors))
        return ConsistencySignature(self.client_id, self._signing_key.sign(signed)).to_bytes()

    def unmask(self, request: bytes) -> bytes:
        """Round 4: the shares the server asks for, after checking that it may have them.

        :raises ProtocolError: naming the server's request when it carries another
            survivor set than the one signed, fewer than a quorum of valid signatures
            on it, or asks for a share that set does not allow: a seed share of a
            client that dropped, a key share of a survivor, or both of one client.
        """
        self._step("unmask")
        message = UnmaskRequest.from_bytes(request)
        seed_ids, key_ids = set(message.seed_ids), set(message.key_ids)
        both = seed_ids & key_ids
        if both:
            raise ProtocolError(
                f"client {self.client_id}: the server's unmask request asks for both the "
                f"self-mask seed share and the masking-key share of clients {sorted(both)}: "
                "refusing, as together they would unmask those clients' inputs"
            )
        self._check_consistency(message)
        survivors = set(self._survivors)
        if seed_ids - survivors or key_ids & survivors:
            raise ProtocolError(
                f"client {self.client_id}: the server's unmask request asks for seed shares "
                f"of {sorted(seed_ids - survivors)}, outside the signed survivor set, or for "
                f"key shares of {sorted(key_ids & survivors)}, inside it: refusing"
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

    def _check_consistency(self, message: UnmaskRequest) -> None:
        """Check that a quorum of survivors signed the same U3 as this client did."""
        me = self.client_id
        if message.survivors != self._survivors:
            raise ProtocolError(
                f"client {me}: the server's unmask request carries another survivor set "
                "than the one this client signed: refusing"
            )
        signers = [u for u, _, _ in message.signatures]
        if len(set(signers)) != len(signers) or not set(signers) <= set(self._survivors):
            raise ProtocolError(
                f"client {me}: the server's unmask request carries signatures of "
                f"{sorted(signers)}, not of distinct survivors: refusing"
            )
        quorum = self.config.quorum
        if len(signers) < quorum:
            raise ProtocolError(
                f"client {me}: the server's unmask request carries {len(signers)} signatures "
                f"on the survivor set, fewer than the quorum {quorum}: refusing"
            )
        for u, key, _ in message.signatures:
            self._directory.key_of(u, key)
        survivors = ids_bytes(self._survivors)  # what every signer signed
        self._directory.verify_all(
            [
                (u, signature, survivors_statement(self.config, u, survivors))
                for u, _, signature in message.signatures
            ],
            "the survivor set",
        )

    def _require_threshold(self, count: int, what: str) -> None:
        if count < self.config.threshold:
            raise ProtocolError(
                f"client {self.client_id}: only {count} {what}, fewer than the threshold "
                f"{self.config.threshold}; refusing to go on"
            )
