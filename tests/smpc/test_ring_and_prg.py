"""Ring wrap-around, fixed-point encoding, truncation, the ChaCha20 PRG and sharing."""

import numpy as np
import pytest
import torch
from scipy import stats

from privfl.smpc import ChaChaPRG, FixedPoint, SharedTensor, reconstruct, share, truncate_shares

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EDGES = torch.tensor([INT64_MIN, INT64_MAX, 0, -1, 1, INT64_MIN + 1, INT64_MAX - 1])


def _signed(v: int) -> int:
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def test_int64_add_and_mul_wrap_modulo_2_64():
    rng = np.random.default_rng(0)
    a = rng.integers(INT64_MIN, INT64_MAX, size=200, dtype=np.int64, endpoint=True)
    b = rng.integers(INT64_MIN, INT64_MAX, size=200, dtype=np.int64, endpoint=True)
    a = torch.cat([torch.from_numpy(a), EDGES])
    b = torch.cat([torch.from_numpy(b), EDGES.flip(0)])
    prod, total, diff = (a * b).tolist(), (a + b).tolist(), (a - b).tolist()
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        assert prod[i] == _signed(x * y)
        assert total[i] == _signed(x + y)
        assert diff[i] == _signed(x - y)


def test_fixed_point_round_trip_within_half_ulp():
    enc = FixedPoint(16)
    x = torch.randn(10_000, dtype=torch.float64) * 1000
    err = (enc.decode(enc.encode(x)) - x).abs().max().item()
    assert err <= 2.0**-17


def test_fixed_point_range_is_checked():
    enc = FixedPoint(16)
    limit = enc.max_abs * (1 - 1e-9)
    enc.encode(torch.tensor([limit, -limit], dtype=torch.float64))
    assert enc.max_abs == 2.0**46
    with pytest.raises(ValueError, match="fixed-point range"):
        enc.encode(torch.tensor([enc.max_abs]))
    with pytest.raises(ValueError, match="finite"):
        enc.encode(torch.tensor([float("nan")]))


def test_sharing_reconstructs_exactly_including_edges():
    prg = ChaChaPRG(seed=1)
    x = torch.cat([prg.ring((5000,)), EDGES])
    shared = share(x, prg)
    assert torch.equal(reconstruct(shared), x)
    assert not torch.equal(shared.shares[0], x)


def _chi2_pvalue(byte_values: torch.Tensor) -> float:
    counts = torch.bincount(byte_values, minlength=256).numpy()
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.parametrize("party", [0, 1])
def test_single_share_of_a_constant_is_uniform(party):
    # 2^17 shares of one constant; each party's share must look uniform on Z_2^64. The top
    # and low bytes are tested with chi-square at significance 1e-3 (seeded: reproducible).
    x = torch.full((2**17,), 123_456_789, dtype=torch.int64)
    s = share(x, ChaChaPRG(seed=7)).shares[party]
    assert _chi2_pvalue((s >> 56) & 0xFF) > 1e-3
    assert _chi2_pvalue(s & 0xFF) > 1e-3


def test_uniformity_check_detects_a_biased_share():
    # Negative control: the same test rejects shares whose low bit is stuck at zero.
    s = ChaChaPRG(seed=7).ring((2**17,)) & ~1
    assert _chi2_pvalue(s & 0xFF) < 1e-3


def test_prg_seeding_and_bits():
    assert torch.equal(ChaChaPRG(seed=3).ring((64,)), ChaChaPRG(seed=3).ring((64,)))
    assert not torch.equal(ChaChaPRG().ring((64,)), ChaChaPRG().ring((64,)))
    assert ChaChaPRG().is_secure
    assert not ChaChaPRG(seed=3).is_secure
    bits = ChaChaPRG(seed=4).bits((100_000,))
    assert set(bits.unique().tolist()) == {0, 1}
    assert abs(bits.double().mean().item() - 0.5) < 0.01


def test_truncation_is_within_one_ulp_for_small_values():
    prg = ChaChaPRG(seed=5)
    x = torch.randint(-(2**40), 2**40, (100_000,))
    out = reconstruct(SharedTensor(truncate_shares(share(x, prg).shares, 16)))
    assert ((out - (x >> 16)).abs() <= 1).all()


def test_truncation_failure_rate_matches_theory():
    # With |x| = 2^60 the sum x_0 + x_1 wraps with probability |x| / 2^64 = 1/16 (the
    # SecureML bound 2^(l_x + 1 - 64) with l_x = 60 is 1/8). Measure it on 200k sharings.
    n = 200_000
    x = torch.full((n,), 2**60, dtype=torch.int64)
    out = reconstruct(SharedTensor(truncate_shares(share(x, ChaChaPRG(seed=6)).shares, 16)))
    failed = (out - (x >> 16)).abs() > 1
    rate = failed.double().mean().item()
    expected = 1 / 16
    sigma = (expected * (1 - expected) / n) ** 0.5
    assert abs(rate - expected) < 5 * sigma
    # A failure is off by about 2^(64-16), never a small error.
    assert ((out - (x >> 16))[failed].abs() > 2**40).all()
