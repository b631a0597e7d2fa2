"""The ring Z_2^64 on ``torch.int64`` tensors, fixed-point encoding and share truncation.

Ring arithmetic
    Every secret value is an element of Z_2^64 stored in a ``torch.int64`` tensor. Addition,
    subtraction and multiplication of int64 tensors on the CPU wrap around silently in two's
    complement, which is exactly arithmetic modulo 2^64; the test suite checks this. The
    signed reading of a ring element is its two's-complement value in [-2^63, 2^63).

Fixed point
    A real number x is encoded as round(x * 2^f) with ``f`` fractional bits (default 16).
    The representable range is ``|x| < 2^(62 - f)`` (about 7.0e13 for f = 16): one bit of
    headroom below the int64 limit keeps a sum of two encodings from wrapping. A product of
    two encodings carries 2f fractional bits and must itself stay far below 2^63, see
    :func:`truncate_shares` for the probability that truncation fails.

Truncation (Mohassel & Zhang, "SecureML", IEEE S&P 2017, section 4.1)
    After multiplying two fixed-point values their shares must be divided by 2^f. Party 0
    shifts its share arithmetically, party 1 negates, shifts and negates again. If the true
    value satisfies ``|x| < 2^l_x``, the result is off by at most one unit in the last place
    except with probability about 2^(l_x + 1 - 64) (for a fixed x it is ``|x| / 2^64`` with a
    uniform share of party 0): the failure happens when x_0 + x_1 wraps around the ring, and
    then the result is off by about 2^(64 - f). ``tests/smpc`` measures this rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from privfl.errors import ConfigError

RING_BITS = 64
DEFAULT_FRAC_BITS = 16


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point encoding of real numbers as ring elements with ``frac_bits`` fractional bits."""

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 30:
            raise ConfigError("frac_bits", self.frac_bits, "an integer from 0 to 30")

    @property
    def scale(self) -> int:
        """The integer 2^f that one unit of the real line is worth."""
        return 1 << self.frac_bits

    @property
    def max_abs(self) -> float:
        """Exclusive bound on ``|x|`` that :meth:`encode` accepts: 2^(62 - f)."""
        return float(2 ** (RING_BITS - 2 - self.frac_bits))

    def encode(self, x: torch.Tensor | float) -> torch.Tensor:
        """Encode real values as int64 ring elements, rounding to the nearest 2^-f.

        Raises ``ValueError`` for non-finite values or values outside (-max_abs, max_abs).
        """
        values = torch.as_tensor(x, dtype=torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("fixed-point encoding needs finite values (found nan or inf)")
        largest = float(values.abs().max()) if values.numel() else 0.0
        if largest >= self.max_abs:
            raise ValueError(
                f"value {largest:.6g} is outside the fixed-point range |x| < "
                f"2^{62 - self.frac_bits} = {self.max_abs:.6g} for frac_bits = {self.frac_bits}"
            )
        return torch.round(values * self.scale).to(torch.int64)

    def decode(self, r: torch.Tensor) -> torch.Tensor:
        """Decode int64 ring elements (signed reading) to float64 reals."""
        return r.to(torch.float64) / self.scale


def truncate_shares(
    shares: torch.Tensor, frac_bits: int, parties: tuple[int, ...] = (0, 1)
) -> torch.Tensor:
    """Divide a two-party sharing by 2^frac_bits locally (SecureML truncation).

    ``shares`` has the shares of ``parties`` stacked on dimension 0 (both, or one party's
    own). Party 0 computes ``x0 >> f``; party 1 computes ``-((-x1) >> f)``. With
    ``|x| < 2^l_x`` the reconstruction is floor-or-ceil of x / 2^f (error at most 1 ulp)
    except with probability about 2^(l_x + 1 - 64), when it is off by about 2^(64 - f);
    see the module docstring.
    """
    if parties == (0,):
        return shares >> frac_bits
    if parties == (1,):
        return -((-shares) >> frac_bits)
    out = torch.empty_like(shares)
    out[0] = shares[0] >> frac_bits
    out[1] = -((-shares[1]) >> frac_bits)
    return out
