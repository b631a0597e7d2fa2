"""Shamir secret sharing over the prime field of the Mersenne prime 2^521 - 1.

A secret ``s`` is hidden as the constant term of a random polynomial ``f`` of degree
``t - 1``; holder ``x`` gets ``f(x)``. Any ``t`` shares give ``s`` by Lagrange
interpolation at 0, and any ``t - 1`` shares are consistent with every secret, so they
reveal nothing about it (Shamir 1979, "How to Share a Secret", CACM 22(11)).

Secure aggregation (Bonawitz et al. 2017) shares two 256-bit secrets per client; the
field of 2^521 - 1 holds them with room to spare, and Python integers do its arithmetic
exactly. This is the one primitive of :mod:`privfl.secagg` written by hand: ``cryptography``
has no secret sharing, and no well-kept Python library provides it (the few packages on
PyPI are unmaintained or use ``random`` for coefficients). Coefficients come from
:mod:`secrets`, the operating system's CSPRNG.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1
"""The field modulus, a Mersenne prime larger than any 256-bit secret."""

SHARE_BYTES = 66
"""Bytes of a share in big-endian form (521 bits round up to 66 bytes)."""


def split(secret: int, *, threshold: int, xs: Sequence[int]) -> list[int]:
    """Shares of ``secret`` at the points ``xs``, any ``threshold`` of which recover it.

    :param secret: An integer in ``[0, PRIME)``.
    :param threshold: The number ``t`` of shares needed; the polynomial has degree t - 1.
    :param xs: Distinct nonzero evaluation points in ``[1, PRIME)``, one per holder.
    :returns: ``f(x)`` for each ``x`` in ``xs``, in the same order.
    :raises ValueError: for a secret out of range, ``threshold`` outside
        ``[1, len(xs)]``, or repeated or out-of-range points.
    """
    if not 0 <= secret < PRIME:
        raise ValueError("the secret must be an integer in [0, 2^521 - 1)")
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and {len(xs)} (the holders)")
    # f(x) = secret + sum_j c_j x^j by Horner's rule, highest degree first. The points are
    # small (client ids), so reducing once at the end is faster than at every step.
    highest_first = [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        value = 0
        for coefficient in highest_first:
            value = (value + coefficient) * x
        shares.append((value + secret) % PRIME)
    return shares


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_i`` with ``f(0) = sum_i l_i f(x_i)`` for any ``f`` of degree < len(xs)."""
    return lagrange_at(xs, 0)


def lagrange_at(xs: Sequence[int], at: int) -> list[int]:
    """Coefficients ``l_i`` with ``f(at) = sum_i l_i f(x_i)`` for any ``f`` of degree < len(xs).

    ``l_i = prod_{j != i} (at - x_j) / (x_i - x_j)``. The denominators depend on the
    points only and are inverted together, with one modular inversion (Montgomery's
    batch-inversion trick), once per set of points (kept for the next call).
    """
    _check_points(xs)
    terms = [(at - x) % PRIME for x in xs]
    prefix, suffix = [1], [1]
    for term in terms:
        prefix.append(prefix[-1] * term % PRIME)
    for term in reversed(terms):
        suffix.append(suffix[-1] * term % PRIME)
    suffix.reverse()  # suffix[i] = prod of terms[i:]
    inverses = _inverse_denominators(tuple(xs))
    return [prefix[i] * suffix[i + 1] % PRIME * inverses[i] % PRIME for i in range(len(xs))]


@functools.lru_cache(maxsize=256)
def _inverse_denominators(xs: tuple[int, ...]) -> tuple[int, ...]:
    # Products of small differences are exact integers; reduce each once.
    denominators = [math.prod(xi - xj for xj in xs if xj != xi) % PRIME for xi in xs]
    prefix = [1]
    for d in denominators:
        prefix.append(prefix[-1] * d % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)
    inverses = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        inverses[i] = inverse * prefix[i] % PRIME
        inverse = inverse * denominators[i] % PRIME
    return tuple(inverses)


def off_polynomial(shares: Mapping[int, int], *, threshold: int) -> list[int]:
    """The points whose shares do not lie on one polynomial of degree < ``threshold``.

    Honest shares of one secret all lie on the dealer's polynomial, so more than
    ``threshold`` shares can be checked against each other: the polynomial through
    the first ``threshold`` must pass through every other share. Returns ``[]`` when
    they all agree (or there are ``threshold`` or fewer: then any values agree, and a
    corrupt share cannot be detected this way); the one point whose removal makes the
    rest agree, when there is exactly one such point and at least ``threshold + 1``
    others to agree; else every point (they disagree, but which is wrong cannot be
    told). This is error detection for the Reed-Solomon code that Shamir shares
    form (McEliece and Sarwate 1981, "On Sharing Secrets and Reed-Solomon Codes").
    """
    points = sorted(shares)
    if _agree(shares, points, threshold):
        return []
    if len(points) >= threshold + 2:
        culprits = [x for x in points if _agree(shares, [p for p in points if p != x], threshold)]
        if len(culprits) == 1:
            return culprits
    return points


def _agree(shares: Mapping[int, int], points: Sequence[int], threshold: int) -> bool:
    """Whether the shares at ``points`` lie on one polynomial of degree < ``threshold``.

    They do exactly when ``sum_i x_i^k f(x_i) / prod_{j != i} (x_i - x_j) = 0`` for
    every ``k < m - threshold`` (``m`` points): each sum is the leading divided
    difference of ``x^k f``, zero for every degree below ``m - 1``, and the
    ``m - threshold`` sums are independent checks (the dual of a Reed-Solomon code is
    one; MacWilliams and Sloane 1977, ch. 10 section 8), so they vanish exactly on the
    ``threshold``-dimensional code. Scaled by a common multiple of the denominators
    (``_dual_weights``), the sums need no modular inverse, and multiplying by the
    small points costs less than interpolating at each point beyond ``threshold``.
    """
    terms = [w * shares[x] for w, x in zip(_dual_weights(tuple(points)), points, strict=True)]
    for _ in range(len(points) - threshold):
        if sum(terms) % PRIME:
            return False
        terms = [term * x for term, x in zip(terms, points, strict=True)]
    return True


@functools.lru_cache(maxsize=256)
def _dual_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``L / prod_{j != i} (x_i - x_j)`` for each point, ``L`` the least common multiple
    of those products: exact integers, and ``L`` is invertible modulo the prime (its
    factors are differences of distinct points in ``[1, PRIME)``, none a multiple of
    the prime), so scaling a check by ``L`` keeps it equivalent."""
    denominators = [math.prod(xi - xj for xj in xs if xj != xi) for xi in xs]
    common = math.lcm(*denominators)
    return tuple(common // d for d in denominators)


def reconstruct(shares: Mapping[int, int], *, threshold: int) -> int:
    """The secret from at least ``threshold`` shares (a map from point ``x`` to ``f(x)``).

    Exactly ``threshold`` shares are used (those of the smallest points).

    :raises ValueError: with fewer than ``threshold`` shares: they are consistent with
        every secret, so there is nothing to reconstruct.
    """
    if threshold < 1:
        raise ValueError(f"threshold {threshold} must be at least 1")
    if len(shares) < threshold:
        raise ValueError(
            f"{len(shares)} shares are fewer than the threshold {threshold}: "
            "the secret cannot be reconstructed"
        )
    xs = sorted(shares)[:threshold]
    return combine([shares[x] for x in xs], lagrange_at_zero(xs))


def combine(values: Sequence[int], coefficients: Sequence[int]) -> int:
    """``sum_i coefficients[i] * values[i]`` in the field: the secret from its shares."""
    return sum(c * v for c, v in zip(coefficients, values, strict=True)) % PRIME


def to_bytes(share: int) -> bytes:
    """A share (field element) as 66 big-endian bytes."""
    return share.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """The field element in 66 big-endian bytes.

    :raises ValueError: for a wrong length or a value not below the prime.
    """
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share has {SHARE_BYTES} bytes, not {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise ValueError("a share must be below 2^521 - 1")
    return value


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError("evaluation points must be distinct")
    if any(not 0 < x < PRIME for x in xs):
        raise ValueError("evaluation points must be in [1, 2^521 - 1)")
