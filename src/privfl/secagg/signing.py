"""Signatures of the actively secure protocol: who said what, in which session and round.

Bonawitz et al. 2017 (CCS, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", section 6 and the ConsistencyCheck round) make secure aggregation hold
against a server that deviates from the protocol by having each client sign, with a
long-term signing key, its advertised public keys and, in the consistency check, the
set ``U3`` of clients whose masked input the server says it holds. A public-key
infrastructure binds each client id to its signing key, so the server can neither
forge a client's keys nor invent signers.

Here the signatures are Ed25519 (RFC 8032) from ``cryptography``. Every signed
statement starts with a label naming its kind and carries the session id, the round
and the signer, so a signature from another session, round, kind or client does not
verify (:func:`statement`). :class:`KeyDirectory` is the infrastructure's view at one
party: the id -> verify-key map it trusts. A directory of registered keys
(:func:`trusted_setup`) stands for a PKI that registered every key before the
session; one with ``first_use`` pins the first key it sees for an id and refuses any
other later (trust on first use), which is only as good as the first time a key was
seen.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privfl.secagg.messages import ProtocolError

VERIFY_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_LABEL = b"privfl.secagg.v2."
_MAX_VERIFIED = 1 << 16  # verifications a directory remembers (a few MB)
_ONE, _ALL = b"one\x00", b"all\x00"  # what a remembered digest covers: one signature, a list


def statement(kind: str, session: bytes, round: int, signer: int, *parts: bytes) -> bytes:
    """The bytes ``signer`` signs: label, session, round, signer id, then ``parts``.

    Every field has a fixed width or a length prefix, so two different statements
    never have the same bytes.
    """
    head = _LABEL + kind.encode() + b"\x00" + struct.pack(">H", len(session)) + session
    body = b"".join(struct.pack(">I", len(part)) + part for part in parts)
    return head + struct.pack(">QI", round, signer) + body


def ids_bytes(ids: Sequence[int]) -> bytes:
    """Client ids as big-endian u32 words, in the order given (a signed set: sorted)."""
    return struct.pack(f">{len(ids)}I", *ids)


def digest(data: bytes | memoryview) -> bytes:
    """SHA-256 of ``data``: a masked input is signed by its digest, hashed once."""
    return hashlib.sha256(data).digest()


def verify_key(private: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte Ed25519 public key of ``private``."""
    return private.public_key().public_bytes_raw()


class KeyDirectory:
    """The signing keys one party trusts: client id -> raw Ed25519 public key.

    :param keys: Keys registered before the session (the PKI).
    :param first_use: Trust on first use: a key for an id not yet known is pinned when
        first presented. False: every id must be registered beforehand.
    """

    def __init__(self, keys: Mapping[int, bytes] | None = None, *, first_use: bool = False) -> None:
        self._keys = dict(keys or {})
        self.first_use = first_use
        # Digests of (key, signature, statement) that verified. The clients of one host
        # share a directory, and in the consistency check each of them checks the same
        # signatures: a signature that verified once verifies again, so the host checks
        # each once (a deployment's client checks its quorum once anyway).
        self._verified: set[bytes] = set()

    def __contains__(self, client: object) -> bool:
        return client in self._keys

    def key_of(self, client: int, presented: bytes | None = None) -> bytes:
        """The trusted key of ``client``; pins ``presented`` under trust on first use.

        :raises ProtocolError: naming the client when it has no trusted key, or when
            ``presented`` differs from the key registered for it.
        """
        known = self._keys.get(client)
        if known is None:
            if presented is None or not self.first_use:
                raise ProtocolError(f"client {client} has no registered signing key")
            if len(presented) != VERIFY_KEY_BYTES:
                raise ProtocolError(f"client {client}'s signing key has {len(presented)} bytes")
            known = self._keys.setdefault(client, bytes(presented))
        if presented is not None and presented != known:
            raise ProtocolError(
                f"client {client} presents another signing key than the one registered for it"
            )
        return known

    def verify(self, client: int, signature: bytes, signed: bytes, what: str) -> None:
        """Check that ``client`` signed ``signed``.

        :param what: What was signed, for the error message.
        :raises ProtocolError: naming the client when the signature does not verify.
        """
        key = self.key_of(client)
        seen = digest(_ONE + key + struct.pack(">I", len(signature)) + signature + signed)
        if seen in self._verified:
            return
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, signed)
        except (InvalidSignature, ValueError) as error:
            raise ProtocolError(
                f"client {client}'s signature on {what} does not verify: forged, altered, "
                "or replayed from another session or round"
            ) from error
        self._remember(seen)

    def verify_all(self, signed: Sequence[tuple[int, bytes, bytes]], what: str) -> None:
        """Check each ``(client, signature, statement)`` of ``signed`` as :meth:`verify` does.

        Every survivor checks the same list in the consistency check (the quorum's
        signatures on U3), so a host whose clients share this directory remembers the
        digest of a list that verified and checks each list once, not once per client.

        :raises ProtocolError: naming the first client whose signature does not verify.
        """
        entries: list[bytes] = []
        for client, signature, message in signed:
            head = struct.pack(">III", client, len(signature), len(message))
            entries += (head, self.key_of(client), signature, message)
        seen = digest(_ALL + b"".join(entries))
        if seen in self._verified:
            return
        for client, signature, message in signed:
            self.verify(client, signature, message, what)
        self._remember(seen)

    def _remember(self, seen: bytes) -> None:
        if len(self._verified) > _MAX_VERIFIED:
            self._verified.clear()
        self._verified.add(seen)


def provisioned_key(secret: bytes, client: int) -> Ed25519PrivateKey:
    """The signing key provisioned for ``client``: HKDF-SHA256 of a provisioning secret.

    Every host that holds the client half's ``secret`` derives the same key for a
    client, so a client keeps its key wherever it runs; the server half never reads
    the secret.
    """
    seed = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + struct.pack(">I", client)
    ).derive(secret)
    return Ed25519PrivateKey.from_private_bytes(seed)


def trusted_setup(client_ids: Iterable[int]) -> tuple[dict[int, Ed25519PrivateKey], KeyDirectory]:
    """A signing key for each client and the closed directory of their public keys.

    Stands for a PKI that registered every client's key before the session; the
    private keys go to the clients only.
    """
    private = {u: Ed25519PrivateKey.generate() for u in client_ids}
    return private, KeyDirectory({u: verify_key(k) for u, k in private.items()})
