"""The byte format of secure-aggregation messages: exact round trips, strict decoding."""

import numpy as np
import pytest

from privfl.messages import bytes_tensor
from privfl.secagg import ProtocolError
from privfl.secagg.arena import MessageArena
from privfl.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyBroadcast,
    MaskedInput,
    ShareKeys,
    ShareRelay,
    SurvivorSet,
    UnmaskRequest,
    UnmaskResponse,
)

KEY_A, KEY_B, KEY_C = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
SIGNATURE, TAG = bytes(range(100, 164)), bytes(range(200, 216))
MESSAGES = [
    AdvertiseKeys(7, KEY_A, KEY_B, KEY_C, SIGNATURE),
    KeyBroadcast(
        ((1, KEY_A, KEY_B, KEY_C, SIGNATURE), (2**32 - 1, KEY_B, KEY_A, KEY_C, SIGNATURE)),
        KEY_C,
    ),
    KeyBroadcast((), KEY_A),
    ShareKeys(3, ((4, b"\x00" * 160), (9, b"xyz"))),
    ShareRelay(((4, b"ciphertext"),)),
    SurvivorSet((0, 4, 2**32 - 1)),
    ConsistencySignature(5, SIGNATURE),
    UnmaskRequest((1, 2, 3), (5,)),
    UnmaskRequest((1,), (), (1, 6), ((1, KEY_A, SIGNATURE), (6, KEY_B, SIGNATURE))),
    UnmaskResponse(8, ((1, 2**520), (2, 0)), ((5, 12345),)),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_and_strictness(message):
    data = message.to_bytes()
    assert type(message).from_bytes(data) == message
    with pytest.raises(ProtocolError, match="truncated"):
        type(message).from_bytes(data[:-1])
    with pytest.raises(ProtocolError, match="1 extra bytes"):
        type(message).from_bytes(data + b"\x00")
    other = ShareRelay if not isinstance(message, ShareRelay) else ShareKeys
    with pytest.raises(ProtocolError, match=f"expected a {other.__name__} message"):
        other.from_bytes(data)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masked_input_keeps_ring_words_exactly(dtype):
    vector = np.array([0, 1, np.iinfo(dtype).max, 12345], dtype=dtype)
    data = MaskedInput(2, vector, TAG, KEY_C).to_bytes()
    assert len(data) == 2 + 4 + 16 + 32 + 1 + 4 + 5 + vector.nbytes  # header padded to 64
    decoded = MaskedInput.from_bytes(data)
    assert (decoded.sender, decoded.tag, decoded.commitment) == (2, TAG, KEY_C)
    assert decoded.vector.dtype == dtype
    np.testing.assert_array_equal(decoded.vector, vector)


@pytest.mark.parametrize("bits", [1, 12, 20, 31, 40])
def test_masked_input_of_a_narrow_ring_travels_at_its_bits(bits):
    dtype = np.uint32 if bits <= 32 else np.uint64
    vector = np.random.default_rng(bits).integers(0, 2**bits, size=37, dtype=dtype)
    data = MaskedInput(2, vector, TAG, KEY_C, bits).to_bytes()
    assert len(data) == MaskedInput.HEADER_BYTES + (37 * bits + 7) // 8
    decoded = MaskedInput.from_bytes(data)
    assert (decoded.ring_bits, decoded.vector.dtype) == (bits, np.dtype(dtype))
    np.testing.assert_array_equal(decoded.vector, vector)


def test_masked_input_rejects_other_rings_and_lengths():
    data = bytearray(MaskedInput(2, np.zeros(3, np.uint32), TAG, KEY_C).to_bytes())
    for bits in (0, 65):
        data[54] = bits
        with pytest.raises(ProtocolError, match=f"ring of {bits} bits"):
            MaskedInput.from_bytes(bytes(data))
    data[54] = 32
    data[55:59] = (4).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="truncated"):
        MaskedInput.from_bytes(bytes(data))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_sealed_buffer_is_the_message_with_its_words_aligned(dtype):
    message, vector = MaskedInput.buffer(5, dtype)
    assert vector.ctypes.data % 8 == 0
    assert vector.flags.writeable
    vector[:] = [3, 0, np.iinfo(dtype).max, 7, 1]
    bits = 8 * np.dtype(dtype).itemsize
    assert MaskedInput.seal(message, 2, TAG, KEY_C, bits) is message
    assert bytes(message) == MaskedInput(2, vector.copy(), TAG, KEY_C, bits).to_bytes()
    decoded = MaskedInput.from_bytes(bytes(message))
    np.testing.assert_array_equal(decoded.vector, vector)
    with pytest.raises(ProtocolError, match="32- or 64-bit words, not 20"):
        MaskedInput.seal(message, 2, TAG, KEY_C, 20)


def test_an_arena_cuts_aligned_messages_that_travel_without_a_copy():
    arena = MessageArena()
    taken = [MaskedInput.buffer(size, np.uint64, arena) for size in (3, 1000, 5, 3_000_000)]
    starts = [np.frombuffer(message, np.uint8).ctypes.data for message, _ in taken]
    assert all(start % 64 == starts[0] % 64 for start in starts[:3])  # one block
    for (_, vector), start in zip(taken, starts, strict=True):
        assert vector.ctypes.data == start + MaskedInput.HEADER_BYTES
        assert vector.ctypes.data % 8 == 0
        vector[:] = np.arange(vector.size, dtype=np.uint64)
    for message, vector in taken:  # no message overlaps another
        np.testing.assert_array_equal(vector, np.arange(vector.size, dtype=np.uint64))
        sealed = MaskedInput.seal(message, 2, TAG, KEY_C, 64)
        assert bytes(sealed) == MaskedInput(2, vector.copy(), TAG, KEY_C, 64).to_bytes()
    tensor = bytes_tensor(taken[0][0])
    tensor[MaskedInput.HEADER_BYTES] = 99  # the tensor is the message, not a copy of it
    assert taken[0][1][0] == 99
    assert bytes_tensor(b"\x01\x02").tolist() == [1, 2]


def test_masked_input_header_padding_must_be_zero():
    data = bytearray(MaskedInput(2, np.zeros(3, np.uint32), TAG, KEY_C).to_bytes())
    data[63] = 1
    with pytest.raises(ProtocolError, match="padding is not zero"):
        MaskedInput.from_bytes(bytes(data))


def test_a_share_out_of_the_field_is_rejected():
    data = bytearray(UnmaskResponse(1, ((2, 5),), ()).to_bytes())
    data[14:80] = (2**528 - 1).to_bytes(66, "big")
    with pytest.raises(ProtocolError, match="bad share of client 2"):
        UnmaskResponse.from_bytes(bytes(data))


def test_version_is_checked():
    data = bytearray(UnmaskRequest((), ()).to_bytes())
    data[0] = 1
    with pytest.raises(ProtocolError, match="version 1"):
        UnmaskRequest.from_bytes(bytes(data))
