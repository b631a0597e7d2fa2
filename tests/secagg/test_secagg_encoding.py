"""Fixed-point encoding into Z_2^32 and Z_2^64, and the no-wrap bit count."""

import numpy as np
import pytest
import torch

from privfl.errors import ConfigError, DataError
from privfl.secagg import decode, encode, required_bits, ring_bits_for, ring_dtype


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("frac_bits", [0, 8, 16])
def test_round_trip_error_is_at_most_half_a_unit(dtype, frac_bits):
    values = np.random.default_rng(frac_bits).uniform(-3, 3, size=10_000)
    ring, clamped = encode(values, frac_bits=frac_bits, bound=3.0, dtype=dtype)
    assert ring.dtype == dtype
    assert clamped == 0
    error = np.abs(decode(ring, frac_bits=frac_bits) - values).max()
    assert error <= 2.0 ** -(frac_bits + 1)


def test_torch_input_any_shape_and_twos_complement():
    values = torch.tensor([[-1.0, 0.5], [0.0, 2.0]])
    ring, _ = encode(values, frac_bits=4, bound=4.0, dtype=np.uint32)
    assert ring.tolist() == [2**32 - 16, 8, 0, 32]
    assert decode(ring, frac_bits=4).tolist() == [-1.0, 0.5, 0.0, 2.0]


def test_ring_sum_decodes_to_the_sum():
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, size=(50, 1000))
    bits = required_bits(1.0, 20, 50)
    dtype = ring_dtype(ring_bits_for(1.0, 20, 50))
    assert bits <= 32
    assert dtype == np.uint32
    total = np.zeros(1000, dtype=dtype)
    for row in values:
        total += encode(row, frac_bits=20, bound=1.0, dtype=dtype)[0]
    assert np.abs(decode(total, frac_bits=20) - values.sum(0)).max() <= 50 * 2.0**-21


def test_clamping_is_counted():
    ring, clamped = encode(
        np.array([-5.0, -1.0, 0.2, 1.0, 7.5]), frac_bits=8, bound=1.0, dtype=np.uint64
    )
    assert clamped == 2
    assert decode(ring, frac_bits=8).tolist() == [-1.0, -1.0, 0.19921875, 1.0, 1.0]


def test_required_bits_is_exactly_enough():
    for bound, frac_bits, n in [(1.0, 16, 1), (1.0, 16, 100), (0.3, 10, 7), (4.0, 20, 1000)]:
        bits = required_bits(bound, frac_bits, n)
        largest = n * int(np.ceil(bound * 2**frac_bits))  # |sum| of n clamped values
        assert largest <= 2 ** (bits - 1) - 1 < 2 * largest  # fits, and one bit fewer would not
    assert required_bits(1.0, 16, 100) == 24


def test_required_bits_refuses_more_than_64():
    with pytest.raises(ConfigError, match="needs a 65-bit ring, more than 64: lower frac_bits"):
        required_bits(1.0, 57, 64)
    assert required_bits(1.0, 56, 64) == 64
    with pytest.raises(ConfigError, match="bound"):
        required_bits(0.0, 8, 3)
    with pytest.raises(ConfigError, match="num_clients"):
        required_bits(1.0, 8, 0)
    with pytest.raises(ConfigError, match="frac_bits"):
        required_bits(1.0, 64, 1)


def test_encode_checks_its_arguments():
    with pytest.raises(ConfigError, match="must fit a 32-bit ring"):
        encode(np.zeros(3), frac_bits=16, bound=2.0**16, dtype=np.uint32)
    with pytest.raises(ConfigError, match="dtype"):
        encode(np.zeros(3), frac_bits=16, bound=1.0, dtype=np.int64)
    with pytest.raises(DataError, match="NaN"):
        encode(np.array([0.0, np.nan]), frac_bits=16, bound=1.0, dtype=np.uint64)
    with pytest.raises(ConfigError, match="ring_bits"):
        ring_dtype(16)
    with pytest.raises(ConfigError, match="dtype"):
        decode(np.zeros(3, np.int64), frac_bits=4)
