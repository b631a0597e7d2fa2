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
* Authentication of masked inputs: a Poly1305 tag (RFC 8439) under a one-time key
  agreed between the client's c-key and the server's key of the round
  (:func:`input_tag`).
* PRG: AES-128 in counter mode (NIST SP 800-38A) under a 32-byte seed, its first 16
  bytes the key and its last 16 the initial counter block, the keystream read as
  little-endian ring words. Each seed keys one stream only. A 128-bit key matches the
  about 128-bit security of X25519, which the seeds are agreed with; OpenSSL runs AES on
  the CPU's AES instructions, and on this project's machines AES-128-CTR wrote the
  keystream about 1.6x as fast as ChaCha20 (``bench/secagg.py --prg``).
  :func:`add_masks` adds or subtracts several masks into a vector block by block,
  with one reused block-sized buffer: the keystream is written (``update_into``) and
  added while it is in cache, with no Python loop over elements and no allocation the
  size of the vector.
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
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.poly1305 import Poly1305

from privfl.secagg.messages import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
_SHARE_LABEL = b"privfl.secagg.v2.share"
_MASK_LABEL = b"privfl.secagg.v1.mask"
_INPUT_LABEL = b"privfl.secagg.v2.input"
TAG_BYTES = 16
BLOCK_BYTES = 1 << 17
"""Bytes of keystream written and added at a time: fits in a core's L2 cache with the
vector's block, and is large enough that the per-block Python calls cost little."""


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
    secret: bytes, client: int, parts: Iterable[bytes | memoryview], *, session: bytes, round: int
) -> bytes:
    """The Poly1305 tag (RFC 8439) with which ``client`` authenticates its masked input.

    The one-time key is derived (HKDF) from the agreement of the client's c-key and
    the server's key of the round, with the session, the round and the client id, so
    the tag proves to the server, and only to it, that the client sent these bytes in
    this round. Poly1305 reads the vector at several GB/s, several times the speed of
    hashing it for a signature.
    """
    context = struct.pack(">H", len(session)) + session + struct.pack(">QI", round, client)
    mac = Poly1305(_derive(secret, _INPUT_LABEL + context))
    for part in parts:
        mac.update(part)
    return mac.finalize()


def check_input_tag(
    secret: bytes,
    client: int,
    parts: Iterable[bytes | memoryview],
    tag: bytes,
    *,
    session: bytes,
    round: int,
) -> None:
    """Check :func:`input_tag`.

    :raises ProtocolError: naming the client when the tag does not match: the input
        was altered or forged, or replayed from another session or round.
    """
    expected = input_tag(secret, client, parts, session=session, round=round)
    if not hmac.compare_digest(expected, tag):
        raise ProtocolError(
            f"client {client}'s masked input failed authentication: altered, forged, or "
            "replayed from another session or round"
        )


def mask_seed(secret: bytes) -> bytes:
    """The PRG seed of a pairwise mask from the s-key agreement; the same at both ends."""
    return _derive(secret, _MASK_LABEL)


def _stream(seed: bytes) -> CipherContext:
    """The PRG stream of a 32-byte ``seed``: encrypting zero bytes with it gives the mask.

    :raises ProtocolError: for a seed of another length.
    """
    if len(seed) != KEY_BYTES:
        raise ProtocolError(f"a PRG seed has {KEY_BYTES} bytes, not {len(seed)}")
    return Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()


def add_masks(vector: np.ndarray, masks: Iterable[tuple[bytes, int]]) -> None:
    """``vector += sum(sign * PRG(seed) for seed, sign in masks)`` in place, modulo 2^bits.

    :param vector: A 1-D ring vector (``numpy.uint32`` or ``numpy.uint64``, native or
        little-endian), changed in place.
    :param masks: ``(seed, sign)`` pairs: a 32-byte PRG seed and +1 or -1.
    """
    streams = [(_stream(seed), sign) for seed, sign in masks]
    words = np.dtype(vector.dtype).newbyteorder("<")
    per_block = BLOCK_BYTES // words.itemsize
    zeros = memoryview(bytes(min(vector.size, per_block) * words.itemsize))
    keystream = np.empty(len(zeros) // words.itemsize, dtype=words)
    buffer = keystream.data.cast("B")
    for start in range(0, vector.size, per_block):
        block = vector[start : start + per_block]
        count = block.size
        for stream, sign in streams:
            stream.update_into(zeros[: count * words.itemsize], buffer)
            (np.add if sign > 0 else np.subtract)(block, keystream[:count], out=block)
