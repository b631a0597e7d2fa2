"""Shamir sharing over GF(2^521 - 1): t shares recover, t - 1 shares fit every secret."""

import itertools
import random
import secrets

import pytest

from privfl.secagg import shamir
from privfl.secagg.shamir import PRIME


def _interpolate(points, at):
    """Lagrange interpolation at ``at``, written out plainly as an independent check."""
    total = 0
    for xi, yi in points.items():
        term = yi
        for xj in points:
            if xj != xi:
                term = term * (at - xj) * pow(xi - xj, -1, PRIME) % PRIME
        total += term
    return total % PRIME


def test_any_t_shares_reconstruct_the_secret():
    secret = secrets.randbits(256)
    xs = [1, 2, 5, 9, 10, 31, 77]
    shares = dict(zip(xs, shamir.split(secret, threshold=4, xs=xs), strict=True))
    for subset in itertools.combinations(xs, 4):
        assert shamir.reconstruct({x: shares[x] for x in subset}, threshold=4) == secret
    assert shamir.reconstruct(shares, threshold=4) == secret  # more than t is fine


def test_fewer_than_t_shares_are_an_error():
    xs = [1, 2, 3, 4]
    shares = dict(zip(xs, shamir.split(12345, threshold=3, xs=xs), strict=True))
    with pytest.raises(ValueError, match="2 shares are fewer than the threshold 3"):
        shamir.reconstruct({1: shares[1], 4: shares[4]}, threshold=3)


def test_t_minus_1_shares_are_consistent_with_every_secret():
    rng = random.Random(0)
    xs = [3, 8, 11, 12, 40]
    secret = secrets.randbits(256)
    shares = dict(zip(xs, shamir.split(secret, threshold=5, xs=xs), strict=True))
    seen = {x: shares[x] for x in xs[:4]}  # what t - 1 = 4 colluders hold
    for other in [0, 1, secret ^ 1, rng.randrange(PRIME)]:
        # The degree-4 polynomial through (0, other) and the 4 seen shares gives the fifth
        # holder a share that, with the seen ones, reconstructs ``other``.
        fifth = _interpolate({0: other, **seen}, at=xs[4])
        assert shamir.reconstruct({**seen, xs[4]: fifth}, threshold=5) == other
    assert _interpolate({0: secret, **seen}, at=xs[4]) == shares[xs[4]]


def test_shares_of_threshold_one_are_the_secret_and_of_higher_thresholds_are_not():
    assert shamir.split(42, threshold=1, xs=[1, 2]) == [42, 42]
    shares = shamir.split(42, threshold=2, xs=[1, 2, 3])
    assert 42 not in shares
    assert len(set(shares)) == 3


def test_lagrange_coefficients_sum_to_one():
    # f = 1 is a polynomial of every degree, so the coefficients at 0 must add up to 1.
    assert sum(shamir.lagrange_at_zero([2, 3, 7, 100, 2**32])) % PRIME == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"secret": PRIME, "threshold": 1, "xs": [1]}, "secret"),
        ({"secret": 1, "threshold": 3, "xs": [1, 2]}, "threshold 3"),
        ({"secret": 1, "threshold": 0, "xs": [1, 2]}, "threshold 0"),
        ({"secret": 1, "threshold": 1, "xs": [1, 1]}, "distinct"),
        ({"secret": 1, "threshold": 1, "xs": [0, 1]}, "points"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shamir.split(**kwargs)


def test_share_bytes_round_trip_and_range():
    value = PRIME - 1
    assert shamir.from_bytes(shamir.to_bytes(value)) == value
    assert len(shamir.to_bytes(0)) == shamir.SHARE_BYTES == 66
    with pytest.raises(ValueError, match="below"):
        shamir.from_bytes(PRIME.to_bytes(66, "big"))
    with pytest.raises(ValueError, match="66 bytes"):
        shamir.from_bytes(bytes(65))


def test_lagrange_at_any_point_matches_plain_interpolation():
    xs = [2, 3, 7, 11]
    shares = dict(zip(xs, shamir.split(secrets.randbits(256), threshold=4, xs=xs), strict=True))
    for at in (0, 1, 5, 40):
        coefficients = shamir.lagrange_at(xs, at)
        assert shamir.combine([shares[x] for x in xs], coefficients) == _interpolate(shares, at)


@pytest.mark.parametrize(("holders", "expected"), [(7, [4]), (5, [1, 2, 3, 4, 5]), (4, [])])
def test_off_polynomial_finds_the_odd_share_when_enough_agree(holders, expected):
    """t = 4: with t + 3 shares the odd one is named; with t + 1 only the disagreement
    is seen; with t shares any values agree."""
    xs = list(range(1, holders + 1))
    shares = dict(zip(xs, shamir.split(12345, threshold=4, xs=xs), strict=True))
    assert shamir.off_polynomial(shares, threshold=4) == []
    shares[4] = (shares[4] + 1) % PRIME
    assert shamir.off_polynomial(shares, threshold=4) == expected


def test_off_polynomial_with_two_corrupt_shares_names_them_all():
    xs = list(range(1, 9))
    shares = dict(zip(xs, shamir.split(7, threshold=3, xs=xs), strict=True))
    shares[2] += 1
    shares[6] += 5
    assert shamir.off_polynomial(shares, threshold=3) == xs
