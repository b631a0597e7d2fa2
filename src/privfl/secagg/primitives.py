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
* PRG: the ChaCha20 keystream under a 32-byte seed, read as little-endian ring words.
  :class:`MaskAccumulator` writes it into one reused buffer (``update_into``) and adds
  or subtracts it in place: no Python loop over elements and no allocation per mask.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privfl.secagg.messages import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
_SHARE_LABEL = b"privfl.secagg.v1.share"
_MASK_LABEL = b"privfl.secagg.v1.mask"
_CHACHA_NONCE = bytes(16)  # each PRG seed is used for one stream only


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


class MaskAccumulator:
    """Adds and subtracts PRG masks into ring vectors of one length and dtype."""

    def __init__(self, length: int, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        nbytes = length * self.dtype.itemsize
        self._zeros = bytes(nbytes)
        self._stream = np.empty(length, dtype=self.dtype.newbyteorder("<"))
        self._buffer = self._stream.data.cast("B")

    def expand(self, seed: bytes) -> np.ndarray:
        """The mask ``PRG(seed)``; valid until the next call (the buffer is reused)."""
        encryptor = Cipher(algorithms.ChaCha20(seed, _CHACHA_NONCE), mode=None).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        return self._stream

    def add(self, vector: np.ndarray, seed: bytes, sign: int = 1) -> None:
        """``vector += sign * PRG(seed)`` in place, modulo 2^bits."""
        mask = self.expand(seed)
        if sign > 0:
            np.add(vector, mask, out=vector)
        else:
            np.subtract(vector, mask, out=vector)
