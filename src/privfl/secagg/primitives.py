"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

* Key agreement: X25519 (Bernstein 2006; RFC 7748). Each client has a c-key pair, whose
  agreements encrypt Shamir shares, and an s-key pair, whose agreements seed the
  pairwise masks (Bonawitz et al. 2017, "Practical Secure Aggregation for
  Privacy-Preserving Machine Learning", CCS).
* Key derivation: HKDF-SHA256 (RFC 5869) of the agreed secret, with a label per use.
  Share keys also bind the session, the round, the sender and the recipient, so each
  key encrypts one message.
* Authenticated encryption of shares: ChaCha20-Poly1305 (RFC 8439) with a random nonce
  and the session, round, sender and recipient as associated data, so the server, which
  relays the ciphertexts, can neither read nor alter nor redirect nor replay them.
* Authentication of masked inputs: a GMAC tag (AES-GCM, NIST SP 800-38D) under a
  one-time key agreed between the client's c-key and the server's key of the round
  (:func:`input_tag`).
* PRG: AES-128 in counter mode under a 32-byte seed, its first 16 bytes the key: the
  keystream, read as little-endian ring words, comes in segments of
  :data:`SEGMENT_BYTES`, segment ``i`` the AES-128-GCM encryption of zeros (NIST SP
  800-38D) under the nonce ``(seed[16:24] XOR seed[24:32]) || i`` (32-bit ``i``; the
  tag is dropped). GCM's encryption
  is counter mode from the block ``nonce || 2``, so every AES input of a stream is
  distinct. It is used for its speed: OpenSSL's GCM runs AES on the CPU's vector AES
  instructions, and on this project's machines wrote the keystream about 1.8x as fast
  as plain AES-128-CTR, itself about 1.6x as fast as ChaCha20 (``bench/secagg.py
  --prg``). Each seed keys one stream only. A 128-bit key matches the about 128-bit
  security of X25519, which the seeds are agreed with. :func:`add_masks` adds or
  subtracts several masks into a vector a segment at a time, with one reused buffer:
  the keystream is written (``encrypt_into``) and added while it is in cache, with no
  Python loop over elements and no allocation the size of the vector.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Iterable

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privfl.secagg.messages import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
_SHARE_LABEL = b"privfl.secagg.v2.share"
_MASK_LABEL = b"privfl.secagg.v1.mask"
_INPUT_LABEL = b"privfl.secagg.v3.input"
TAG_BYTES = 16
SEGMENT_BYTES = 1 << 17
"""Bytes of a segment of the PRG's keystream, each under its own nonce (part of the
PRG's definition), and what :func:`add_masks` writes and adds at a time: it fits in a
core's L2 cache with the vector's block, and is large enough that the per-segment
Python calls cost little."""
_ZEROS = memoryview(bytes(SEGMENT_BYTES))  # what the keystream encrypts, read only


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``private``."""
    return private.public_key().public_bytes_raw()


def private_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte private key (the secret that clients Shamir-share)."""
    return private.private_bytes_raw()


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret of ``private`` and the peer's 32-byte public key.

    :raises ProtocolError: for a key that is malformed or of low order.
    """
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as error:  # a low-order point gives the all-zero secret
        raise ProtocolError(f"unusable X25519 public key {peer_public.hex()}") from error


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def _context(session: bytes, round: int, sender: int, recipient: int) -> bytes:
    # Fixed widths after a length-prefixed session: distinct contexts, distinct bytes.
    return (
        _SHARE_LABEL
        + struct.pack(">H", len(session))
        + session
        + struct.pack(">QII", round, sender, recipient)
    )


def encrypt_share(
    secret: bytes, sender: int, recipient: int, plaintext: bytes, *, session: bytes, round: int
) -> bytes:
    """``nonce || ChaCha20-Poly1305(plaintext)``: the shares ``sender`` sends ``recipient``.

    The key (HKDF info) and the associated data both carry the session, the round,
    the sender and the recipient, so the ciphertext opens for that one message only.

    :param secret: The c-key agreement of the two clients (:func:`agree`).
    """
    context = _context(session, round, sender, recipient)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(_derive(secret, context)).encrypt(nonce, plaintext, context)


def decrypt_share(
    secret: bytes, sender: int, recipient: int, ciphertext: bytes, *, session: bytes, round: int
) -> bytes:
    """The plaintext of :func:`encrypt_share`.

    :raises ProtocolError: naming the sender when authentication fails: the ciphertext
        was altered, truncated, made for another pair of clients, or replayed from
        another session or round.
    """
    context = _context(session, round, sender, recipient)
    try:
        return ChaCha20Poly1305(_derive(secret, context)).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], context
        )
    except (InvalidTag, ValueError) as error:  # ValueError: too short for a nonce
        raise ProtocolError(
            f"the share that client {sender} sent to client {recipient} failed "
            "authentication: the ciphertext was tampered with, misrouted or replayed"
        ) from error


def input_tag(
    secret: bytes,
    client: int,
    commitment: bytes,
    vector: bytes | memoryview,
    *,
    session: bytes,
    round: int,
) -> bytes:
    """The GMAC tag (NIST SP 800-38D) with which ``client`` authenticates its masked
    input: AES-256-GCM of nothing, with ``vector`` (the input's bytes) as associated data.

    The one-time key is derived (HKDF) from the agreement of the client's c-key and
    the server's key of the round, with the session, the round, the client id and the
    ``commitment`` to its self-mask seed, so the tag proves to the server, and only to
    it, that the client sent this vector with this commitment in this round. Each key
    tags one message, so the nonce is fixed. GMAC reads the vector with the CPU's AES
    and carry-less multiplication instructions: 0.04 ms for the 2NN's 1.6 MB on this
    project's machines, against 0.18 ms for a Poly1305 tag (``bench/secagg.py --prg``).
    """
    context = struct.pack(">H", len(session)) + session + struct.pack(">QI", round, client)
    key = _derive(secret, _INPUT_LABEL + context + commitment)
    return AESGCM(key).encrypt(bytes(NONCE_BYTES), b"", vector)  # the tag alone


def check_input_tag(
    secret: bytes,
    client: int,
    commitment: bytes,
    vector: bytes | memoryview,
    tag: bytes,
    *,
    session: bytes,
    round: int,
) -> None:
    """Check :func:`input_tag`.

    :raises ProtocolError: naming the client when the tag does not match: the input
        or its commitment was altered or forged, or replayed from another session or
        round.
    """
    expected = input_tag(secret, client, commitment, vector, session=session, round=round)
    if not hmac.compare_digest(expected, tag):
        raise ProtocolError(
            f"client {client}'s masked input failed authentication: altered, forged, or "
            "replayed from another session or round"
        )


def mask_seed(secret: bytes) -> bytes:
    """The PRG seed of a pairwise mask from the s-key agreement; the same at both ends."""
    return _derive(secret, _MASK_LABEL)


def _keyed(seed: bytes) -> tuple[AESGCM, bytes]:
    """The cipher and nonce prefix of the PRG stream of a 32-byte ``seed``.

    :raises ProtocolError: for a seed of another length.
    """
    if len(seed) != KEY_BYTES:
        raise ProtocolError(f"a PRG seed has {KEY_BYTES} bytes, not {len(seed)}")
    prefix = int.from_bytes(seed[16:24], "big") ^ int.from_bytes(seed[24:], "big")
    return AESGCM(seed[:16]), prefix.to_bytes(8, "big")


def add_masks(vector: np.ndarray, masks: Iterable[tuple[bytes, int]]) -> None:
    """``vector += sum(sign * PRG(seed) for seed, sign in masks)`` in place, modulo 2^bits.

    :param vector: A 1-D ring vector (``numpy.uint32`` or ``numpy.uint64``, native or
        little-endian), changed in place.
    :param masks: ``(seed, sign)`` pairs: a 32-byte PRG seed and +1 or -1.
    """
    streams = [(*_keyed(seed), sign) for seed, sign in masks]
    words = np.dtype(vector.dtype).newbyteorder("<")
    per_block = SEGMENT_BYTES // words.itemsize
    out = np.empty(min(vector.size, per_block) * words.itemsize + TAG_BYTES, dtype=np.uint8)
    keystream = out[:-TAG_BYTES].view(words)  # GCM writes the segment, then its tag
    buffer = out.data
    for index, start in enumerate(range(0, vector.size, per_block)):
        block = vector[start : start + per_block]
        count = block.size
        size = count * words.itemsize
        for cipher, prefix, sign in streams:
            nonce = prefix + index.to_bytes(4, "big")
            cipher.encrypt_into(nonce, _ZEROS[:size], None, buffer[: size + TAG_BYTES])
            (np.add if sign > 0 else np.subtract)(block, keystream[:count], out=block)
