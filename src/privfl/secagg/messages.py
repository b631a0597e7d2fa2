"""The messages of one secure-aggregation round and their byte format.

Clients and the server exchange nothing but these messages, as ``bytes``, so a server
object cannot reach a client's secrets and the bytes can travel over any transport. The
format is explicit and versioned (no pickle): one version byte, one kind byte, then
fixed-width big-endian fields, with a ``u32`` count before every list and a ``u32``
length before every ciphertext. Vectors travel as little-endian ring words, or packed
at k bits a value in a ring ``Z_2^k`` narrower than 32 bits (version 3), after a
header padded to 64 bytes (version 4), so that a message that starts on a word
boundary holds its words aligned: clients mask their input where it travels, and the
server reads it in place (:meth:`MaskedInput.buffer`). Decoding checks every length
and rejects trailing bytes.

The rounds of the actively secure protocol of Bonawitz et al. 2017 (CCS), with its
consistency check; signatures are Ed25519 over the statements of :mod:`.signing`,
the masked input's tag GMAC (:func:`~privfl.secagg.primitives.input_tag`):

============================= ==== =============================================
message                       way  content
============================= ==== =============================================
:class:`AdvertiseKeys`        up   c-key and s-key X25519 public keys, signed
:class:`KeyBroadcast`         down those of its live neighbours; the server's key
:class:`ShareKeys`            up   one encrypted pair of shares per neighbour
:class:`ShareRelay`           down the encrypted shares addressed to the client
:class:`MaskedInput`          up   input plus masks, seed commitment, MAC tag
:class:`SurvivorSet`          down U3: the clients whose masked input arrived
:class:`ConsistencySignature` up   the client's signature on U3
:class:`UnmaskRequest`        down whose shares to reveal, U3 and its signatures
:class:`UnmaskResponse`       up   those shares
============================= ==== =============================================
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from privfl.errors import PrivflError
from privfl.secagg import shamir
from privfl.secagg.arena import MessageArena
from privfl.secagg.encoding import pack_ring, packed_ring_size, unpack_ring

VERSION = 4
_KEY = 32  # raw X25519 or Ed25519 public key bytes
_SIGNATURE = 64  # Ed25519
_TAG = 16  # GMAC
_RING_DTYPES: dict[int, np.dtype] = {32: np.dtype("<u4"), 64: np.dtype("<u8")}


class ProtocolError(PrivflError):
    """A party received a malformed, forged or forbidden message, and refuses to go on.

    Clients raise it when a share fails authentication (the message names the sender),
    when the server asks them for both shares of one client, or when the server's
    messages contradict the round; the server raises it for malformed client messages.
    """


class _Reader:
    """Reads big-endian fields off a message and fails with :class:`ProtocolError`."""

    def __init__(self, data: bytes, kind: str) -> None:
        self._data = memoryview(data)
        self._at = 0
        self._kind = kind

    def view(self, size: int) -> memoryview:
        if self._at + size > len(self._data):
            raise ProtocolError(f"{self._kind} message is truncated")
        self._at += size
        return self._data[self._at - size : self._at]

    def take(self, size: int) -> bytes:
        return bytes(self.view(size))

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def finish(self) -> None:
        if self._at != len(self._data):
            raise ProtocolError(
                f"{self._kind} message has {len(self._data) - self._at} extra bytes"
            )


def _header(kind: int) -> bytes:
    return bytes((VERSION, kind))


def _open(data: bytes, cls: Any) -> _Reader:
    reader = _Reader(data, cls.__name__)
    version, kind = reader.take(2)
    if version != VERSION or kind != cls.KIND:
        raise ProtocolError(
            f"expected a {cls.__name__} message (version {VERSION}, kind {cls.KIND}), "
            f"got version {version}, kind {kind}"
        )
    return reader


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client to server: the two public keys of ``sender``, signed.

    ``verify_key`` is the sender's Ed25519 key (checked against the directory) and
    ``signature`` its signature on the two keys for this session and round.
    """

    KIND: ClassVar[int] = 1
    sender: int
    c_public: bytes
    s_public: bytes
    verify_key: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        keys = self.c_public + self.s_public + self.verify_key + self.signature
        return _header(self.KIND) + _u32(self.sender) + keys

    @classmethod
    def from_bytes(cls, data: bytes) -> AdvertiseKeys:
        reader = _open(data, cls)
        message = cls(
            reader.u32(),
            reader.take(_KEY),
            reader.take(_KEY),
            reader.take(_KEY),
            reader.take(_SIGNATURE),
        )
        reader.finish()
        return message


@dataclass(frozen=True)
class KeyBroadcast:
    """Round 0, server to client: each live neighbour's :class:`AdvertiseKeys` fields,
    ``(id, c_public, s_public, verify_key, signature)``, and the server's X25519 key of
    the round (with which the client authenticates its masked input)."""

    KIND: ClassVar[int] = 2
    keys: tuple[tuple[int, bytes, bytes, bytes, bytes], ...]
    server_public: bytes = bytes(_KEY)

    def to_bytes(self) -> bytes:
        body = b"".join(_u32(u) + b"".join(rest) for u, *rest in self.keys)
        return _header(self.KIND) + self.server_public + _u32(len(self.keys)) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyBroadcast:
        reader = _open(data, cls)
        server_public = reader.take(_KEY)
        keys = tuple(
            (
                reader.u32(),
                reader.take(_KEY),
                reader.take(_KEY),
                reader.take(_KEY),
                reader.take(_SIGNATURE),
            )
            for _ in range(reader.u32())
        )
        reader.finish()
        return cls(keys, server_public)


def _write_ciphertexts(items: tuple[tuple[int, bytes], ...]) -> bytes:
    return _u32(len(items)) + b"".join(_u32(u) + _u32(len(c)) + c for u, c in items)


def _read_ciphertexts(reader: _Reader) -> tuple[tuple[int, bytes], ...]:
    items = []
    for _ in range(reader.u32()):
        peer = reader.u32()
        items.append((peer, reader.take(reader.u32())))
    return tuple(items)


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, client to server: ``(recipient, ciphertext)`` for each neighbour."""

    KIND: ClassVar[int] = 3
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        return _header(self.KIND) + _u32(self.sender) + _write_ciphertexts(self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareKeys:
        reader = _open(data, cls)
        message = cls(reader.u32(), _read_ciphertexts(reader))
        reader.finish()
        return message


@dataclass(frozen=True)
class ShareRelay:
    """Round 1, server to client: ``(sender, ciphertext)`` of each share for the client."""

    KIND: ClassVar[int] = 4
    ciphertexts: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        return _header(self.KIND) + _write_ciphertexts(self.ciphertexts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareRelay:
        reader = _open(data, cls)
        message = cls(_read_ciphertexts(reader))
        reader.finish()
        return message


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, client to server: the masked ring vector of ``sender``, a commitment
    to its self-mask seed (so that the seed rebuilt from shares can be checked), and
    the GMAC tag that authenticates both for this session and round.

    ``ring_bits`` is k of the ring ``Z_2^k`` (1 to 64; None: the width of the
    vector's words, 32 or 64). The vector travels as little-endian words in a 32- or
    64-bit ring, and packed at k bits per value in a narrower one
    (:func:`~privfl.secagg.encoding.pack_ring`), so a 12-bit ring costs 12 bits a value.
    """

    KIND: ClassVar[int] = 5
    HEADER_BYTES: ClassVar[int] = 64
    """Bytes before the vector: version, kind, sender, tag, commitment, ring bits,
    length, then zeros up to a multiple of the widest word."""
    sender: int
    vector: np.ndarray
    tag: bytes
    commitment: bytes
    ring_bits: int | None = None

    @staticmethod
    def words(vector: np.ndarray) -> np.ndarray:
        """The vector as the little-endian words it travels (and is signed) as."""
        return np.ascontiguousarray(vector, dtype=_RING_DTYPES[vector.dtype.itemsize * 8])

    @classmethod
    def buffer(
        cls, size: int, dtype: np.dtype | type, arena: MessageArena | None = None
    ) -> tuple[bytearray | memoryview, np.ndarray] | None:
        """A message of ``size`` words of ``dtype`` (32- or 64-bit), and its vector: a
        client that encodes and masks its input in that vector, then fills in the header
        with :meth:`seal`, sends its input without copying it.

        :param arena: Where to cut the message from
            (:class:`~privfl.secagg.arena.MessageArena`; a new ``bytearray`` if None).
        :returns: None on a big-endian host, whose words are not those the message holds.
        """
        dtype = np.dtype(dtype)
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder != "little"):
            return None
        nbytes = cls.HEADER_BYTES + size * dtype.itemsize
        message = bytearray(nbytes) if arena is None else arena.take(nbytes)
        return message, np.frombuffer(message, dtype, size, cls.HEADER_BYTES)

    @classmethod
    def seal(
        cls,
        message: bytearray | memoryview,
        sender: int,
        tag: bytes,
        commitment: bytes,
        ring_bits: int,
    ) -> bytearray | memoryview:
        """Write the header into a :meth:`buffer` whose vector holds the masked input;
        return the message, now equal to ``to_bytes()`` of the same fields."""
        if ring_bits not in _RING_DTYPES or len(message) < cls.HEADER_BYTES:
            raise ProtocolError(f"a message buffer holds 32- or 64-bit words, not {ring_bits}")
        size = (len(message) - cls.HEADER_BYTES) // (ring_bits // 8)
        message[: cls.HEADER_BYTES] = cls._head(sender, tag, commitment, ring_bits, size)
        return message

    @classmethod
    def _head(cls, sender: int, tag: bytes, commitment: bytes, bits: int, size: int) -> bytes:
        header = _header(cls.KIND) + _u32(sender) + tag + commitment + bytes((bits,)) + _u32(size)
        return header.ljust(cls.HEADER_BYTES, b"\x00")

    def to_bytes(self) -> bytes:
        bits = self.ring_bits or self.vector.dtype.itemsize * 8
        header = self._head(self.sender, self.tag, self.commitment, bits, self.vector.size)
        return b"".join((header, pack_ring(self.vector, bits)))  # one copy of the vector

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        reader = _open(data, cls)
        sender = reader.u32()
        tag, commitment = reader.take(_TAG), reader.take(_KEY)
        (bits,) = reader.take(1)
        if not 1 <= bits <= 64:
            raise ProtocolError(f"MaskedInput ring of {bits} bits: 1 to 64 exist")
        length = reader.u32()
        if any(reader.view(cls.HEADER_BYTES - 2 - 4 - _TAG - _KEY - 1 - 4)):
            raise ProtocolError("MaskedInput header padding is not zero")
        payload = reader.view(packed_ring_size(length, bits))
        reader.finish()  # a 32- or 64-bit vector is a read-only view of ``data``, not a copy
        return cls(sender, unpack_ring(payload, bits, length), tag, commitment, bits)


def _write_ids(ids: tuple[int, ...]) -> bytes:
    return struct.pack(f">I{len(ids)}I", len(ids), *ids)


def _read_ids(reader: _Reader) -> tuple[int, ...]:
    count = reader.u32()
    return struct.unpack(f">{count}I", reader.view(4 * count))


@dataclass(frozen=True)
class SurvivorSet:
    """Round 3 (consistency check), server to client: U3, the clients whose masked
    input the server holds, sorted; each survivor signs it."""

    KIND: ClassVar[int] = 8
    survivors: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return _header(self.KIND) + _write_ids(self.survivors)

    @classmethod
    def from_bytes(cls, data: bytes) -> SurvivorSet:
        reader = _open(data, cls)
        message = cls(_read_ids(reader))
        reader.finish()
        return message


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3, client to server: ``sender``'s signature on the survivor set it got."""

    KIND: ClassVar[int] = 9
    sender: int
    signature: bytes

    def to_bytes(self) -> bytes:
        return _header(self.KIND) + _u32(self.sender) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencySignature:
        reader = _open(data, cls)
        message = cls(reader.u32(), reader.take(_SIGNATURE))
        reader.finish()
        return message


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, server to client: reveal seed shares of ``seed_ids``, key shares of ``key_ids``.

    ``seed_ids`` are the client's neighbours whose masked input arrived (the server
    removes their self-masks); ``key_ids`` those that dropped after sharing their keys
    (the server recomputes their pairwise masks with the survivors). ``survivors`` is
    the set U3 the client signed, and ``signatures`` the ``(signer, verify_key,
    signature)`` of each client that signed it: the client checks both before it
    reveals anything.
    """

    KIND: ClassVar[int] = 6
    seed_ids: tuple[int, ...]
    key_ids: tuple[int, ...]
    survivors: tuple[int, ...] = ()
    signatures: tuple[tuple[int, bytes, bytes], ...] = ()

    def to_bytes(self) -> bytes:
        signed = b"".join(_u32(u) + k + s for u, k, s in self.signatures)
        return b"".join(
            (
                _header(self.KIND),
                _write_ids(self.seed_ids),
                _write_ids(self.key_ids),
                _write_ids(self.survivors),
                _u32(len(self.signatures)),
                signed,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskRequest:
        reader = _open(data, cls)
        ids = _read_ids(reader), _read_ids(reader), _read_ids(reader)
        count = reader.u32()
        size = 4 + _KEY + _SIGNATURE  # fixed-width records, cut out of one copy
        records = reader.take(size * count)
        signatures = tuple(
            (
                int.from_bytes(records[at : at + 4], "big"),
                records[at + 4 : at + 4 + _KEY],
                records[at + 4 + _KEY : at + size],
            )
            for at in range(0, len(records), size)
        )
        reader.finish()
        return cls(*ids, signatures)


def _write_shares(shares: tuple[tuple[int, int], ...]) -> bytes:
    return _u32(len(shares)) + b"".join(_u32(u) + shamir.to_bytes(s) for u, s in shares)


def _read_shares(reader: _Reader) -> tuple[tuple[int, int], ...]:
    shares = []
    for _ in range(reader.u32()):
        owner = reader.u32()
        try:
            shares.append((owner, shamir.from_bytes(reader.take(shamir.SHARE_BYTES))))
        except ValueError as error:
            raise ProtocolError(f"bad share of client {owner}: {error}") from error
    return tuple(shares)


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 4, client to server: ``(owner, share)`` pairs of seed shares and key shares."""

    KIND: ClassVar[int] = 7
    sender: int
    seed_shares: tuple[tuple[int, int], ...]
    key_shares: tuple[tuple[int, int], ...]

    def to_bytes(self) -> bytes:
        return (
            _header(self.KIND)
            + _u32(self.sender)
            + _write_shares(self.seed_shares)
            + _write_shares(self.key_shares)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        reader = _open(data, cls)
        message = cls(reader.u32(), _read_shares(reader), _read_shares(reader))
        reader.finish()
        return message
