"""One-shot empirical privacy estimation from canary cosines, as pure functions.

Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar 2024, "One-shot Empirical Privacy
Estimation for Federated Learning" (ICLR): ``k`` canary clients each send a fixed random
unit direction (scaled to the clip norm). After training, the cosine of each canary's
direction with the final model delta (or, for an adversary who sees every round, the
largest cosine with any round's model delta) is its *statistic*. Directions that were
never inserted ("unseen" canaries) give the null distribution; in ``d`` dimensions a
random unit vector's cosine with any fixed vector has mean 0 and variance exactly
``1 / d``. Fitting a Gaussian to each sample and taking the ``epsilon`` at which the two
Gaussians are ``(epsilon, delta)``-indistinguishable gives the estimate
(:func:`epsilon_two_gaussians`); for the Gaussian mechanism in high dimension it
converges to the true epsilon (their Theorem 3.2).

The estimate is not a bound. :func:`epsilon_lower_bound` is the conservative
counterpart (Jagielski, Ullman, Oprea 2020, "Auditing Differentially Private Machine
Learning", NeurIPS): the best threshold test on the statistics, with one-sided Jeffreys
intervals on its false-positive and false-negative rates, as the reference code
(``one_shot_epe`` in google-research/federated) does.

scipy supplies the normal and beta distributions and the root finder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from privfl.errors import ConfigError

# --- Epsilon between two Gaussians -------------------------------------------------------


def epsilon_two_gaussians(
    mean0: float, std0: float, mean1: float, std1: float, delta: float
) -> float:
    """Return the smallest ``epsilon`` for which N(mean0, std0^2) and N(mean1, std1^2)
    are ``(epsilon, delta)``-indistinguishable in both directions.

    For distributions ``P`` and ``Q`` with privacy loss ``L = log(p / q)``, the smallest
    ``delta`` at ``epsilon`` is ``P[L > eps] - e^eps Q[L > eps]`` (Steinke 2022,
    "Composition of Differential Privacy & Privacy Amplification by Subsampling",
    Proposition 7). For two Gaussians ``L`` is a quadratic in the outcome, so both
    probabilities are normal masses outside or between its roots; they are taken in log
    space, which keeps ``delta`` down to 1e-300 exact. Epsilon is found by Brent's
    method on the larger of the two directions' ``log delta``. With equal standard
    deviations and ``|mean1 - mean0| / std = s`` this is the Gaussian mechanism of
    sensitivity ``s`` (Balle and Wang 2018, Theorem 8).
    """
    for key, value in (("std0", std0), ("std1", std1)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(key, value, "a finite standard deviation > 0")
    if not 0 < delta < 1:
        raise ConfigError("delta", delta, "a number in (0, 1)")

    def log_delta(eps: float) -> float:
        return max(
            _log_delta(mean1, std1, mean0, std0, eps), _log_delta(mean0, std0, mean1, std1, eps)
        )

    target = math.log(delta)
    if log_delta(0.0) <= target:
        return 0.0
    low, high = 0.0, 1.0
    while log_delta(high) > target:
        low, high = high, 2 * high
    return float(optimize.brentq(lambda e: log_delta(e) - target, low, high, xtol=1e-12))


def _log_delta(mean_p: float, std_p: float, mean_q: float, std_q: float, eps: float) -> float:
    """``log(P[L > eps] - e^eps Q[L > eps])`` for ``L = log p - log q`` (-inf when <= 0).

    ``L(y) = a y^2 + b y + c``; the set ``L > eps`` is a half-line (``a = 0``), the
    outside of the roots (``a > 0``) or the inside (``a < 0``).
    """
    a = 0.5 * (std_q**-2 - std_p**-2)
    b = mean_p / std_p**2 - mean_q / std_q**2
    c = 0.5 * ((mean_q / std_q) ** 2 - (mean_p / std_p) ** 2) + math.log(std_q / std_p)
    if a == 0:
        if b == 0:
            return -math.inf  # the same distribution
        cut = (eps - c) / b
        log_p = _log_half_line(cut, mean_p, std_p, above=b > 0)
        log_q = _log_half_line(cut, mean_q, std_q, above=b > 0)
    else:
        discriminant = b * b - 4 * a * (c - eps)
        if discriminant <= 0:
            return -math.inf  # L > eps nowhere (a < 0), or everywhere (a > 0): 1 - e^eps <= 0
        roots = sorted(
            ((-b - math.sqrt(discriminant)) / (2 * a), (-b + math.sqrt(discriminant)) / (2 * a))
        )
        if a > 0:
            log_p = np.logaddexp(
                _log_half_line(roots[0], mean_p, std_p, above=False),
                _log_half_line(roots[1], mean_p, std_p, above=True),
            )
            log_q = np.logaddexp(
                _log_half_line(roots[0], mean_q, std_q, above=False),
                _log_half_line(roots[1], mean_q, std_q, above=True),
            )
        else:
            log_p = _log_interval(roots[0], roots[1], mean_p, std_p)
            log_q = _log_interval(roots[0], roots[1], mean_q, std_q)
    ratio = eps + log_q - log_p
    if not ratio < 0:
        return -math.inf
    return float(log_p + math.log1p(-math.exp(ratio)))


def _log_half_line(cut: float, mean: float, std: float, *, above: bool) -> float:
    """``log P[Y > cut]`` (``above``) or ``log P[Y < cut]`` for ``Y ~ N(mean, std^2)``."""
    z = (cut - mean) / std
    return float(special.log_ndtr(-z if above else z))


def _log_interval(low: float, high: float, mean: float, std: float) -> float:
    """``log P[low < Y < high]`` for ``Y ~ N(mean, std^2)``, from the nearer tail."""
    lo, hi = (low - mean) / std, (high - mean) / std
    if lo > 0:  # both in the upper tail: difference of survival functions
        lo, hi = -hi, -lo
    top, bottom = special.log_ndtr(hi), special.log_ndtr(lo)
    if bottom >= top:
        return -math.inf
    return float(top + math.log1p(-math.exp(bottom - top)))


# --- The estimate (Andrew et al. 2024) ---------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """An epsilon estimate from fitted Gaussians, with a bootstrap interval.

    :ivar epsilon: The estimate between the fitted Gaussians.
    :ivar low: Lower end of the bootstrap percentile interval.
    :ivar high: Upper end of the bootstrap percentile interval.
    :ivar observed_mean: Mean of the observed canaries' statistics.
    :ivar observed_std: Their standard deviation.
    :ivar null_mean: Mean of the null (unseen canaries).
    :ivar null_std: Its standard deviation.
    """

    epsilon: float
    low: float
    high: float
    observed_mean: float
    observed_std: float
    null_mean: float
    null_std: float


def estimate_epsilon(
    observed: np.ndarray,
    *,
    delta: float,
    unseen: np.ndarray | None = None,
    dim: int | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Andrew et al.'s estimate: epsilon between Gaussians fitted to the observed
    canaries' statistics and to the null, with a bootstrap percentile interval.

    The null is either the ``unseen`` canaries' statistics (fitted like the observed
    ones; the all-iterates statistic needs this) or, given ``dim``, the exact moments of
    a random unit vector's cosine with a fixed vector in ``dim`` dimensions, N(0, 1/dim)
    (the final-model statistic, their Section 4). The interval resamples the canaries
    (and the unseen ones) with replacement ``resamples`` times: it shows how much the
    estimate depends on which canaries were drawn.
    """
    observed = _sample(observed, "observed", 2)
    if (unseen is None) == (dim is None):
        raise ConfigError("null", "unseen and dim", "exactly one of unseen statistics or dim")
    if not 0 < confidence < 1:
        raise ConfigError("confidence", confidence, "a number in (0, 1)")
    if unseen is not None:
        unseen = _sample(unseen, "unseen", 2)
        null_mean, null_std = float(unseen.mean()), float(unseen.std(ddof=1))
    else:
        if not (isinstance(dim, int) and dim >= 2):
            raise ConfigError("dim", dim, "an integer >= 2")
        null_mean, null_std = 0.0, dim**-0.5

    def fitted(sample: np.ndarray, null: np.ndarray | None) -> float:
        mean0, std0 = (null_mean, null_std) if null is None else (null.mean(), null.std(ddof=1))
        return epsilon_two_gaussians(mean0, std0, sample.mean(), sample.std(ddof=1), delta)

    epsilon = fitted(observed, unseen)
    rng = np.random.default_rng(seed)
    boot = [
        fitted(
            rng.choice(observed, len(observed)),
            None if unseen is None else rng.choice(unseen, len(unseen)),
        )
        for _ in range(resamples)
    ]
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail]) if boot else (epsilon, epsilon)
    return Estimate(
        epsilon,
        float(low),
        float(high),
        float(observed.mean()),
        float(observed.std(ddof=1)),
        null_mean,
        null_std,
    )


# --- The conservative lower bound (Jagielski et al. 2020, Jeffreys intervals) ----------------


def jeffreys_upper(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """One-sided upper Jeffreys confidence limit of a binomial rate at level ``1 - alpha``:
    the ``1 - alpha`` quantile of Beta(k + 1/2, n - k + 1/2) (Brown, Cai, DasGupta 2001)."""
    k = np.asarray(successes, dtype=float)
    return np.asarray(stats.beta.ppf(1 - alpha, k + 0.5, trials - k + 0.5))


def epsilon_from_rates(log_fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """The epsilon that a test with these error rates proves at ``delta``, >= 0.

    An ``(eps, delta)``-DP mechanism forces ``FPR + e^eps FNR >= 1 - delta`` and the
    same with the rates swapped (Kairouz, Oh, Viswanath 2015), so
    ``eps >= max(log(1 - delta - FNR) - log FPR, log(1 - delta - FPR) - log FNR)``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(1 - delta - fnr) - log_fpr
        second = np.log(1 - delta - np.exp(log_fpr)) - np.log(fnr)
    both = np.fmax(np.nan_to_num(first, nan=-np.inf), np.nan_to_num(second, nan=-np.inf))
    return np.clip(both, 0, None)


def cosine_null_logsf(threshold: np.ndarray, dim: int) -> np.ndarray:
    """``log P[cos >= t]`` for the cosine of a uniformly random unit vector in ``dim``
    dimensions with a fixed vector: ``(1 + cos) / 2`` is Beta((dim-1)/2, (dim-1)/2)
    exactly (the reference code integrates the same density numerically)."""
    shape = (dim - 1) / 2
    return np.asarray(stats.beta.logsf((1 + np.asarray(threshold)) / 2, shape, shape))


def epsilon_lower_bound(
    observed: np.ndarray,
    *,
    alpha: float,
    delta: float,
    unseen: np.ndarray | None = None,
    dim: int | None = None,
) -> float:
    """The largest epsilon that a threshold test on the statistics shows, with Jeffreys
    upper limits at level ``1 - alpha`` on its error rates.

    Every observed statistic is tried as the threshold ``t`` (guess "observed" for
    statistics >= t). The false-positive rate comes from the ``unseen`` canaries or, given
    ``dim``, exactly from the cosine null (:func:`cosine_null_logsf`), as the reference
    code's ``optimal_epsilon_lower_bound`` and ``..._closed_form_null`` do. Like them it
    takes the best threshold without correcting for the choice, so it is conservative
    for each threshold but not a proof; :mod:`privfl.audit.one_run` gives one.
    """
    observed = np.sort(_sample(observed, "observed", 1))
    if (unseen is None) == (dim is None):
        raise ConfigError("null", "unseen and dim", "exactly one of unseen statistics or dim")
    if not 0 < alpha < 1:
        raise ConfigError("alpha", alpha, "a number in (0, 1)")
    if unseen is not None:
        unseen = np.sort(_sample(unseen, "unseen", 1))
        # Thresholds at each observed statistic, and above all of them (no guess).
        thresholds = np.append(observed, np.inf)
        false_positives = len(unseen) - np.searchsorted(unseen, thresholds, side="right")
        log_fpr = np.log(jeffreys_upper(false_positives, len(unseen), alpha))
    else:
        assert dim is not None
        thresholds = observed
        log_fpr = cosine_null_logsf(observed, dim)
    false_negatives = np.arange(len(thresholds))  # observed statistics below each threshold
    fnr = jeffreys_upper(false_negatives, len(observed), alpha)
    return float(np.max(epsilon_from_rates(log_fpr, fnr, delta)))


def _sample(values: np.ndarray, key: str, minimum: int) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if len(array) < minimum or not np.isfinite(array).all():
        raise ConfigError(key, f"{len(array)} values", f"at least {minimum} finite statistics")
    return array
