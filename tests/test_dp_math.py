"""Tests of the DP-FedAvg math in privfl.algorithms.dp: clipping, noise, distributed, adaptive."""

from __future__ import annotations

import math

import pytest
import torch

from privfl.algorithms.dp import (
    centred_unclipped,
    clip_to_norm,
    default_count_stddev,
    distributed_noise_std,
    gaussian_noise,
    realized_noise_multiplier,
    unclipped_fraction,
    update_clip_norm,
    update_noise_multiplier,
)
from privfl.errors import ConfigError

# --- Clipping ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(5))
def test_clip_bounds_every_row_and_keeps_short_rows_bit_identical(
    seed: int, dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(seed)
    n, dim, clip = 400, 1 + 97 * seed, 1.5
    # Row scales spread over three orders of magnitude, so about half the rows are clipped.
    scales = torch.exp(torch.randn(n, 1, generator=generator, dtype=dtype) * 2)
    updates = torch.randn(n, dim, generator=generator, dtype=dtype) * scales / math.sqrt(dim)

    clipped, norms = clip_to_norm(updates, clip)

    assert clipped.dtype == dtype
    assert clipped.shape == updates.shape
    torch.testing.assert_close(norms, torch.linalg.vector_norm(updates, dim=1))
    short = norms <= clip
    assert 0 < int(short.sum()) < n
    assert torch.equal(clipped[short], updates[short])
    after = torch.linalg.vector_norm(clipped.double(), dim=1)
    eps = torch.finfo(dtype).eps
    assert float(after.max()) <= clip * (1 + 8 * eps)
    torch.testing.assert_close(
        after[~short], torch.full_like(after[~short], clip), rtol=8 * eps, atol=0
    )
    # Clipping only rescales: the direction of a long row is kept.
    expected = updates[~short] * (clip / norms[~short]).unsqueeze(1)
    torch.testing.assert_close(clipped[~short], expected)


def test_clip_flat_update() -> None:
    short = torch.tensor([0.3, -0.4])  # norm 0.5
    clipped, norm = clip_to_norm(short, 1.0)
    assert norm.shape == ()
    assert float(norm) == pytest.approx(0.5)
    assert torch.equal(clipped, short)
    long = torch.tensor([3.0, 4.0])  # norm 5
    clipped, norm = clip_to_norm(long, 1.0)
    assert float(norm) == 5.0
    torch.testing.assert_close(clipped, torch.tensor([0.6, 0.8]))
    at_clip = torch.tensor([0.6, 0.8], dtype=torch.float64)
    assert torch.equal(clip_to_norm(at_clip, 1.0)[0], at_clip)
    zero = torch.zeros(7)
    assert torch.equal(clip_to_norm(zero, 1.0)[0], zero)


@pytest.mark.parametrize("clip", [0, -1.0, math.inf, math.nan, True, "1"])
def test_clip_rejects_bad_clip_norm(clip: object) -> None:
    with pytest.raises(ConfigError, match=r"^clip = "):
        clip_to_norm(torch.ones(3), clip)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_clip_rejects_non_finite_updates(bad: float) -> None:
    updates = torch.ones(3, 4)
    updates[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        clip_to_norm(updates, 1.0)


# --- Gaussian noise ---------------------------------------------------------------------

DRAWS = 200_000


@pytest.mark.parametrize("secure", [False, True])
def test_noise_has_the_requested_distribution(secure: bool) -> None:
    std = 2.5
    generator = None if secure else torch.Generator().manual_seed(0)
    noise = gaussian_noise(DRAWS, std, generator=generator, secure=secure)
    assert noise.dtype == torch.float32
    assert noise.shape == (DRAWS,)
    sample = noise.double()
    assert abs(float(sample.std()) / std - 1) < 0.03
    # The mean of DRAWS normals has std `std / sqrt(DRAWS)`: allow 6 of those.
    assert abs(float(sample.mean())) < 6 * std / math.sqrt(DRAWS)
    # Mass within 1 and 2 standard deviations, as for a normal (sampling sd ~0.001).
    within = [float((sample.abs() < k * std).double().mean()) for k in (1, 2)]
    assert within[0] == pytest.approx(0.682689, abs=0.01)
    assert within[1] == pytest.approx(0.954500, abs=0.01)


def test_noise_shapes_including_odd_sizes() -> None:
    for secure in (False, True):
        assert gaussian_noise((3, 5), 1.0, secure=secure).shape == (3, 5)
        assert gaussian_noise(1, 1.0, secure=secure).shape == (1,)
        assert gaussian_noise(0, 1.0, secure=secure).shape == (0,)
        assert torch.equal(gaussian_noise(4, 0.0, secure=secure), torch.zeros(4))


def test_generator_noise_is_reproducible_and_secure_noise_is_not() -> None:
    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    first = gaussian_noise(1000, 1.0, generator=seeded())
    assert torch.equal(first, gaussian_noise(1000, 1.0, generator=seeded()))
    # Secure mode ignores the generator and draws a fresh key every call.
    secure = [gaussian_noise(1000, 1.0, generator=seeded(), secure=True) for _ in range(2)]
    assert not torch.equal(secure[0], secure[1])
    assert not torch.equal(secure[0], first)


@pytest.mark.parametrize("std", [-1.0, math.nan, math.inf])
def test_noise_rejects_bad_std(std: float) -> None:
    with pytest.raises(ValueError, match="noise std"):
        gaussian_noise(3, std)


# --- Distributed noise ------------------------------------------------------------------


def test_distributed_shares_sum_to_the_total_std() -> None:
    assert distributed_noise_std(3.0, 9) == pytest.approx(1.0)
    clients, total = 16, 2.0
    share = distributed_noise_std(total, clients)
    generator = torch.Generator().manual_seed(1)
    summed = gaussian_noise((clients, DRAWS // clients * 4), share, generator=generator).sum(0)
    assert float(summed.double().std()) == pytest.approx(total, rel=0.03)
    with pytest.raises(ValueError, match="num_clients"):
        distributed_noise_std(1.0, 0)


def test_realized_noise_multiplier() -> None:
    assert realized_noise_multiplier(1.2, 10, 10) == pytest.approx(1.2)
    assert realized_noise_multiplier(1.0, 10, 5) == pytest.approx(math.sqrt(0.5))
    assert realized_noise_multiplier(1.0, 12.5, 25) == pytest.approx(1.0)  # capped at z
    assert realized_noise_multiplier(2.0, 4.0, 1) == pytest.approx(1.0)
    assert realized_noise_multiplier(1.0, 10, 0) == 0.0
    with pytest.raises(ValueError, match="planned_clients"):
        realized_noise_multiplier(1.0, 0, 1)
    with pytest.raises(ValueError, match="contributed_clients"):
        realized_noise_multiplier(1.0, 10, -1)


# --- Adaptive clipping ------------------------------------------------------------------


def test_noise_split_hand_examples() -> None:
    # z = 1, sigma_b = 1: z_Delta = (1 - 1/4)^(-1/2) = 2 / sqrt(3).
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    # 100 expected clients and the default sigma_b = 100 / 20 = 5: (1 - 1/100)^(-1/2).
    assert default_count_stddev(100) == pytest.approx(5.0)
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx(1 / math.sqrt(0.99), rel=1e-12)
    # The split recombines to the total budget.
    for z, sigma_b in [(0.7, 2.0), (1.3, 0.9), (3.0, 50.0)]:
        z_delta = update_noise_multiplier(z, sigma_b)
        assert z_delta > z
        assert (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 0.5), (1.0, 0.3), (2.0, 0.0), (1.0, math.nan)])
def test_noise_split_refuses_a_count_noise_that_spends_the_budget(z: float, sigma_b: float) -> None:
    with pytest.raises(ConfigError, match=r"^count_stddev = .* noise_multiplier / 2"):
        update_noise_multiplier(z, sigma_b)


@pytest.mark.parametrize("z", [0.0, -1.0, math.inf, math.nan])
def test_noise_split_refuses_bad_noise_multiplier(z: float) -> None:
    with pytest.raises(ConfigError, match=r"^noise_multiplier = "):
        update_noise_multiplier(z, 5.0)


def test_clip_update_hand_example_and_bounds() -> None:
    # 70% unclipped against a 50% target: shrink by exp(-0.2 * 0.2).
    assert update_clip_norm(1.0, 0.7, 0.5, 0.2) == pytest.approx(math.exp(-0.04), rel=1e-12)
    assert update_clip_norm(2.0, 0.5, 0.5) == pytest.approx(2.0)
    # The noisy fraction is clamped to [0, 1], so one round moves C by at most exp(eta).
    assert unclipped_fraction(1000.0, 10) == 1.0
    assert unclipped_fraction(-1000.0, 10) == 0.0
    assert unclipped_fraction(0.0, 10) == pytest.approx(0.5)
    assert update_clip_norm(1.0, unclipped_fraction(-1e9, 10), 0.5) <= math.exp(0.2 * 0.5)
    bits = centred_unclipped(torch.tensor([0.5, 1.0, 1.5]), 1.0)
    assert bits.tolist() == [0.5, 0.5, -0.5]
    with pytest.raises(ConfigError, match="target_quantile"):
        update_clip_norm(1.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match="learning_rate"):
        update_clip_norm(1.0, 0.5, 0.5, -0.1)
    with pytest.raises(ConfigError, match=r"^clip = "):
        update_clip_norm(0.0, 0.5, 0.5)


@pytest.mark.parametrize(
    ("quantile", "start", "count_noise"),
    [(0.5, 0.1, False), (0.5, 20.0, False), (0.8, 0.1, False), (0.5, 0.1, True)],
)
def test_clip_norm_tracks_the_target_quantile(
    quantile: float, start: float, count_noise: bool
) -> None:
    generator = torch.Generator().manual_seed(3)
    clients, mu, sigma = 100, 0.3, 0.8
    normal = torch.distributions.Normal(0.0, 1.0)
    true_quantile = math.exp(mu + sigma * float(normal.icdf(torch.tensor(quantile))))
    count_stddev = default_count_stddev(clients)
    clip = start
    for _ in range(200):
        norms = torch.exp(mu + sigma * torch.randn(clients, generator=generator))
        noisy_sum = float(centred_unclipped(norms, clip).sum())
        if count_noise:
            noisy_sum += float(gaussian_noise(1, count_stddev, generator=generator))
        clip = update_clip_norm(clip, unclipped_fraction(noisy_sum, clients), quantile)
    assert clip == pytest.approx(true_quantile, rel=0.1)
