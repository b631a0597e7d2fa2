"""The byte format of secure-aggregation messages: exact round trips, strict decoding."""

import numpy as np
import pytest

from privfl.secagg import ProtocolError
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
    assert len(data) == 2 + 4 + 16 + 32 + 1 + 4 + vector.nbytes
    decoded = MaskedInput.from_bytes(data)
    assert (decoded.sender, decoded.tag, decoded.commitment) == (2, TAG, KEY_C)
    assert decoded.vector.dtype == dtype
    np.testing.assert_array_equal(decoded.vector, vector)


@pytest.mark.parametrize("bits", [1, 12, 20, 31, 40])
def test_masked_input_of_a_narrow_ring_travels_at_its_bits(bits):
    dtype = np.uint32 if bits <= 32 else np.uint64
    vector = np.random.default_rng(bits).integers(0, 2**bits, size=37, dtype=dtype)
    data = MaskedInput(2, vector, TAG, KEY_C, bits).to_bytes()
    assert len(data) == 2 + 4 + 16 + 32 + 1 + 4 + (37 * bits + 7) // 8
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
