"""The masks' PRG: AES-128 in counter mode (GCM's) under the seed, added segment by
segment into ring vectors; the tag of a masked input."""

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privfl.secagg import ProtocolError, primitives

# The GCM specification (McGrew and Viega 2004), test case 2: AES-128 under the zero key
# and the zero nonce, one block of zeros.
GCM_ZERO_BLOCK = bytes.fromhex("0388dace60b6a392f328c2b971b2fe78")


def test_the_mask_is_the_aes_128_gcm_keystream_of_the_seed():
    """Seed = key || nonce prefix (16 bytes, folded to 8); segment 0 has counter 0; the
    keystream is read as little-endian words."""
    for dtype in (np.uint32, np.uint64):
        vector = np.zeros(16 // np.dtype(dtype).itemsize, dtype=dtype)
        primitives.add_masks(vector, [(bytes(32), 1)])
        assert vector.astype(np.dtype(dtype).newbyteorder("<")).tobytes() == GCM_ZERO_BLOCK


def _reference(seed: bytes, size: int, dtype) -> np.ndarray:
    """The whole mask, from AES in counter mode directly: segment ``i`` starts at the
    counter block ``nonce || i || 2``, as GCM's encryption does."""
    prefix = bytes(a ^ b for a, b in zip(seed[16:24], seed[24:], strict=True))
    total, segment = size * np.dtype(dtype).itemsize, primitives.SEGMENT_BYTES
    raw = b"".join(
        Cipher(algorithms.AES(seed[:16]), modes.CTR(prefix + i.to_bytes(4, "big") + b"\0\0\0\2"))
        .encryptor()
        .update(bytes(min(segment, total - i * segment)))
        for i in range(-(-total // segment))
    )
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masks_added_block_by_block_equal_whole_masks(dtype):
    per_block = primitives.SEGMENT_BYTES // np.dtype(dtype).itemsize
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


def test_the_input_tag_binds_the_vector_commitment_client_session_and_round():
    secret, commitment, vector = os.urandom(32), os.urandom(32), os.urandom(1000)
    tag = primitives.input_tag(secret, 3, commitment, vector, session=b"s", round=2)
    assert len(tag) == 16
    primitives.check_input_tag(secret, 3, commitment, vector, tag, session=b"s", round=2)
    flipped = bytes([vector[0] ^ 1]) + vector[1:]
    changes = [
        (os.urandom(32), 3, commitment, vector, b"s", 2),  # another key agreement
        (secret, 4, commitment, vector, b"s", 2),
        (secret, 3, bytes(32), vector, b"s", 2),
        (secret, 3, commitment, flipped, b"s", 2),
        (secret, 3, commitment, vector, b"t", 2),
        (secret, 3, commitment, vector, b"s", 3),
    ]
    for key, client, seed_hash, data, session, round_ in changes:
        with pytest.raises(ProtocolError, match=f"client {client}'s masked input failed"):
            primitives.check_input_tag(
                key, client, seed_hash, data, tag, session=session, round=round_
            )
