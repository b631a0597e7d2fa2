"""Cryptographically secure pseudo-random ring elements from a ChaCha20 keystream.

All shares and all of the dealer's correlated randomness are drawn from this generator.
The keystream of ChaCha20 (Bernstein 2008; RFC 8439) under a 256-bit key is
indistinguishable from uniform bytes, so reading it as little-endian int64 words gives
uniform elements of Z_2^64. Keys come from ``os.urandom``. A ``seed`` may be given for
reproducible tests: the key is then SHA-256 of the seed and the stream is predictable by
anyone who knows the seed, which is NOT secure.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_KEY_BYTES = 32
_NONCE_BYTES = 16


class ChaChaPRG:
    """A stream of uniform int64 words and bits from ChaCha20 keystream.

    ``seed=None`` (the default) draws a fresh key from ``os.urandom``. An integer or string
    seed derives the key deterministically: for tests only, never for real secrets.
    """

    def __init__(self, seed: int | str | None = None) -> None:
        if seed is None:
            key = os.urandom(_KEY_BYTES)
            self.is_secure = True
        else:
            key = hashlib.sha256(f"privfl.smpc.prg:{seed}".encode()).digest()
            self.is_secure = False
        cipher = Cipher(algorithms.ChaCha20(key, bytes(_NONCE_BYTES)), mode=None)
        self._encryptor = cipher.encryptor()

    @classmethod
    def from_key(cls, key: bytes) -> ChaChaPRG:
        """A generator keyed by a secret 32-byte ``key``, e.g. one agreed with another party.

        Two parties holding the same key draw the same stream, so a value drawn from it
        need not be sent (the dealer's seeds in :mod:`privfl.smpc.distributed`).
        """
        if len(key) != _KEY_BYTES:
            raise ValueError(f"a ChaCha20 key has {_KEY_BYTES} bytes, not {len(key)}")
        prg = cls.__new__(cls)
        prg._encryptor = Cipher(
            algorithms.ChaCha20(key, bytes(_NONCE_BYTES)), mode=None
        ).encryptor()
        prg.is_secure = True
        return prg

    def random_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes of keystream (ChaCha20 encryption of zeros)."""
        return self._encryptor.update(bytes(n))

    def ring(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform elements of Z_2^64 as an int64 tensor of the given shape."""
        n = int(np.prod(shape, dtype=np.int64))
        words = np.frombuffer(self.random_bytes(8 * n), dtype="<i8").astype(np.int64)
        return torch.from_numpy(words).reshape(shape)

    def bits(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Uniform bits (0 or 1) as an int64 tensor of the given shape."""
        n = int(np.prod(shape, dtype=np.int64))
        packed = np.frombuffer(self.random_bytes((n + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(packed)[:n].astype(np.int64)
        return torch.from_numpy(bits).reshape(shape)

    def fields(self, shape: tuple[int, ...] | torch.Size, width: int) -> torch.Tensor:
        """Uniform ``width``-bit fields (1, 2, 4, 8, 16, 32 or 64) in the low bits of int64
        words, the higher bits zero: for values of which only the low bits are used, it
        reads ``width / 8`` bytes of keystream a word (at least one) instead of eight."""
        if width == 64:
            return self.ring(shape)
        if width == 1:
            return self.bits(shape)
        n = int(np.prod(shape, dtype=np.int64))
        if width >= 8:
            fields = np.frombuffer(self.random_bytes(n * width // 8), dtype=f"<u{width // 8}")
        elif width in (2, 4):
            fields = np.frombuffer(self.random_bytes(n), dtype=np.uint8) & ((1 << width) - 1)
        else:
            raise ValueError(f"field width {width} is not one of 1, 2, 4, 8, 16, 32, 64")
        return torch.from_numpy(fields.astype(np.int64)).reshape(shape)

    def child(self, label: str) -> ChaChaPRG:
        """An independent generator keyed from this stream (same security as the parent)."""
        key = hashlib.sha256(self.random_bytes(_KEY_BYTES) + label.encode()).digest()
        child = ChaChaPRG.from_key(key)
        child.is_secure = self.is_secure
        return child
