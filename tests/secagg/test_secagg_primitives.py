"""The masks' PRG: AES-128-CTR under the seed, added block by block into ring vectors."""

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privfl.secagg import ProtocolError, primitives

# NIST SP 800-38A, F.5.1 (CTR-AES128.Encrypt): key, initial counter block, two blocks.
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PLAIN = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
NIST_CIPHER = bytes.fromhex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")


def test_the_mask_is_the_aes_128_ctr_keystream_of_the_seed():
    """Seed = key || initial counter block; the keystream is read as little-endian words."""
    keystream = bytes(p ^ c for p, c in zip(NIST_PLAIN, NIST_CIPHER, strict=True))
    for dtype in (np.uint32, np.uint64):
        vector = np.zeros(32 // np.dtype(dtype).itemsize, dtype=dtype)
        primitives.add_masks(vector, [(NIST_KEY + NIST_COUNTER, 1)])
        assert vector.astype(np.dtype(dtype).newbyteorder("<")).tobytes() == keystream


def _reference(seed: bytes, size: int, dtype) -> np.ndarray:
    """The whole mask at once, from the cipher directly."""
    encryptor = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()
    raw = encryptor.update(bytes(size * np.dtype(dtype).itemsize))
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masks_added_block_by_block_equal_whole_masks(dtype):
    per_block = primitives.BLOCK_BYTES // np.dtype(dtype).itemsize
    size = 2 * per_block + 3  # blocks, and a last one cut short mid-AES-block
    rng = np.random.default_rng(0)
    start = rng.integers(0, np.iinfo(dtype).max, size=size, dtype=dtype, endpoint=True)
    seeds = [os.urandom(32) for _ in range(3)]
    signs = [1, -1, 1]
    vector = start.copy()
    primitives.add_masks(vector, zip(seeds, signs, strict=True))
    expected = start.copy()
    for seed, sign in zip(seeds, signs, strict=True):
        mask = _reference(seed, size, dtype)
        expected = expected + mask if sign > 0 else expected - mask  # wraps in the ring
    assert np.array_equal(vector, expected)
    # Subtracting the same masks gives the input back: pairwise masks cancel.
    primitives.add_masks(vector, zip(seeds, [-s for s in signs], strict=True))
    assert np.array_equal(vector, start)


def test_distinct_seeds_give_distinct_masks_and_a_seed_has_32_bytes():
    a, b = np.zeros(1000, np.uint64), np.zeros(1000, np.uint64)
    primitives.add_masks(a, [(bytes(32), 1)])
    primitives.add_masks(b, [(bytes(31) + b"\x01", 1)])
    assert not np.array_equal(a, b)
    empty = np.zeros(0, np.uint32)
    primitives.add_masks(empty, [(bytes(32), 1)])  # nothing to mask, no error
    with pytest.raises(ProtocolError, match="32 bytes, not 16"):
        primitives.add_masks(a, [(bytes(16), 1)])
