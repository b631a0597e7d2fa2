"""Fixed-point encoding into Z_2^32 and Z_2^64, the no-wrap bit count and the ring choice."""

import numpy as np
import pytest
import torch

from privfl.errors import ConfigError, DataError
from privfl.secagg import (
    clamp_bound,
    decode,
    encode,
    encoded_bound,
    required_bits,
    ring_bits_for,
    ring_dtype,
)


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


def _ring_sum(rows, *, bound, frac_bits, ring_bits):
    """Encode each row, add them in the ring (wrapping as the protocol does), decode."""
    dtype = ring_dtype(ring_bits)
    total = np.zeros(len(rows[0]), dtype=dtype)
    for row in rows:
        total += encode(np.asarray(row), frac_bits=frac_bits, bound=bound, dtype=dtype)[0]
    return decode(total, frac_bits=frac_bits)


@pytest.mark.parametrize(
    ("bound", "frac_bits", "fits_32"),
    # n B <= 2^31 - 1 exactly up to these client counts (B = ceil(bound 2^frac_bits)).
    [(1.0, 24, 127), (12.7, 24, 10), (0.3, 20, 6826), (2.0**20, 0, 2047)],
)
def test_the_ring_is_32_bits_up_to_the_bound_and_64_just_beyond(bound, frac_bits, fits_32):
    assert ring_bits_for(bound, frac_bits, fits_32) == 32
    assert ring_bits_for(bound, frac_bits, fits_32 + 1) == 64
    for n, bits in [(fits_32, 32), (fits_32 + 1, 64)]:
        # Adversarial contributions: every value at the bound, or far beyond it.
        for extreme in (bound, -bound, 1e6 * bound, -1e6 * bound):
            total = _ring_sum([[extreme]] * n, bound=bound, frac_bits=frac_bits, ring_bits=bits)
            exact = n * np.rint(bound * 2.0**frac_bits) / 2.0**frac_bits
            assert abs(total[0]) == pytest.approx(exact, rel=1e-12)
            assert np.sign(total[0]) == np.sign(extreme)
    # The test can fail: one client more in the 32-bit ring wraps the sum around.
    wrapped = _ring_sum([[bound]] * (fits_32 + 1), bound=bound, frac_bits=frac_bits, ring_bits=32)
    assert wrapped[0] < 0


def test_a_fixed_ring_too_small_for_the_sum_is_refused_naming_the_fix():
    assert ring_bits_for(1.0, 24, 127, requested=32) == 32
    assert ring_bits_for(1.0, 24, 10, requested=64) == 64
    with pytest.raises(ConfigError, match=r"ring_bits.*at least 33 bits.*set ring_bits = 64"):
        ring_bits_for(1.0, 24, 128, requested=32)
    with pytest.raises(ConfigError, match="ring_bits"):
        ring_bits_for(1.0, 24, 2, requested=16)


def test_clamp_bound_follows_the_declared_bound_only_under_unit_weights():
    # Unit weights: the declared bound, but never below the weight itself, 1, and with
    # room for float32 rounding.
    slack = 1 + 2.0**-20
    assert clamp_bound(2.0**20, 0.5, unit_weights=True) == slack
    assert clamp_bound(2.0**20, 12.7, unit_weights=True) == 12.7 * slack
    assert clamp_bound(2.0**20, 12.8, unit_weights=True) > float(np.float32(12.8)) > 12.8
    # The user's bound caps it, and stays when nothing is declared.
    assert clamp_bound(4.0, 12.7, unit_weights=True) == 4.0
    assert clamp_bound(2.0**20, None, unit_weights=True) == 2.0**20
    # Example-count weights scale the update by counts the server does not know yet.
    assert clamp_bound(2.0**20, 1.0, unit_weights=False) == 2.0**20
    with pytest.raises(ConfigError, match="value_bound"):
        clamp_bound(1.0, -1.0, unit_weights=True)
    with pytest.raises(ConfigError, match="bound"):
        clamp_bound(float("inf"), 1.0, unit_weights=True)


def test_encoded_values_never_exceed_the_encoded_bound():
    rng = np.random.default_rng(3)
    for bound, frac_bits in [(1.0, 24), (0.3, 20), (12.7, 7)]:
        values = np.concatenate([rng.uniform(-2 * bound, 2 * bound, 10_000), [bound, -bound]])
        ring, _ = encode(values, frac_bits=frac_bits, bound=bound, dtype=np.uint64)
        assert np.abs(ring.view(np.int64)).max() == encoded_bound(bound, frac_bits)


def test_encode_writes_into_out():
    out = np.full(4, 7, dtype=np.uint32)
    ring, clamped = encode(
        torch.tensor([-1.0, 0.5, 3.0, 0.0]), frac_bits=4, bound=2.0, dtype=np.uint32, out=out
    )
    assert ring is out
    assert clamped == 1
    assert decode(out, frac_bits=4).tolist() == [-1.0, 0.5, 2.0, 0.0]
    with pytest.raises(ConfigError, match="out"):
        encode(np.zeros(3), frac_bits=4, bound=2.0, dtype=np.uint32, out=out)
    with pytest.raises(DataError, match="NaN"):
        encode(np.array([np.inf, 0.0]), frac_bits=4, bound=2.0, dtype=np.uint32)


@pytest.mark.parametrize("bound", [0.3, 2.0**20, 1.0 + 2.0**-20, 5.0])
@pytest.mark.parametrize("frac_bits", [0, 18, 29])
def test_float32_values_encode_as_their_float64_copies_do(bound, frac_bits):
    """Float32 values are encoded in float32 (scaling by a power of two and rounding to
    an integer are exact), clamped ones to exactly +-bound: the same integers and count
    as the float64 encoding, also for ties, and for bounds no float32 holds."""
    rng = np.random.default_rng(frac_bits)
    values = (rng.standard_normal(4000) * rng.choice([1e-3, 1, 1e7], size=4000)).astype(np.float32)
    values[:50] = (rng.integers(-1000, 1000, 50) + 0.5) / 2.0**frac_bits  # exact ties
    values[50:54] = [bound, -bound, np.nextafter(np.float32(bound), np.float32(9)), -(2.0**100)]
    dtype = np.uint64
    single, single_clamped = encode(values, frac_bits=frac_bits, bound=bound, dtype=dtype)
    double, double_clamped = encode(
        values.astype(np.float64), frac_bits=frac_bits, bound=bound, dtype=dtype
    )
    np.testing.assert_array_equal(single, double)
    assert single_clamped == double_clamped > 0
