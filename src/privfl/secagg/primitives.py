"""The cryptographic primitives of secure aggregation, all from ``cryptography``.

* Key agreement: X25519 (Bernstein 2006; RFC 7748). Each client has a c-key pair, whose
  agreements encrypt Shamir shares, and an s-key pair, whose agreements seed the
  pairwise masks (Bonawitz et al. 2017, "Practical Secure Aggregation for
  Privacy-Preserving Machine Learning", CCS).
* Key derivation: HKDF-SHA256 (RFC 5869) of the agreed secret, with a label per use.
  Share keys also bind the sender and the recipient, so each key encrypts one message.
* Authenticated encryption of shares: ChaCha20-Poly1305 (RFC 8439) with a random nonce
  and the sender and recipient ids as associated data, so the server, which relays the
  ciphertexts, can neither read nor alter nor redirect them.
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

from privfl.secagg.messages import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
_SHARE_LABEL = b"privfl.secagg.v1.share"
_MASK_LABEL = b"privfl.secagg.v1.mask"
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


def _pair(sender: int, recipient: int) -> bytes:
    return _SHARE_LABEL + struct.pack(">II", sender, recipient)


def encrypt_share(secret: bytes, sender: int, recipient: int, plaintext: bytes) -> bytes:
    """``nonce || ChaCha20-Poly1305(plaintext)``: the shares ``sender`` sends ``recipient``.

    :param secret: The c-key agreement of the two clients (:func:`agree`).
    """
    context = _pair(sender, recipient)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(_derive(secret, context)).encrypt(nonce, plaintext, context)


def decrypt_share(secret: bytes, sender: int, recipient: int, ciphertext: bytes) -> bytes:
    """The plaintext of :func:`encrypt_share`.

    :raises ProtocolError: naming the sender when authentication fails: the ciphertext
        was altered, truncated, or made for another pair of clients.
    """
    context = _pair(sender, recipient)
    try:
        return ChaCha20Poly1305(_derive(secret, context)).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], context
        )
    except (InvalidTag, ValueError) as error:  # ValueError: too short for a nonce
        raise ProtocolError(
            f"the share that client {sender} sent to client {recipient} failed "
            "authentication: the ciphertext was tampered with or misrouted"
        ) from error


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
