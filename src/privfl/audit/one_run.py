"""A provable lower bound on epsilon from one training run, as pure functions.

Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training Run" (NeurIPS):
``m`` canaries are each included in training independently with probability 1/2. After
training, an auditor scores every canary, guesses "included" for the ``k+`` highest
scores and "excluded" for the ``k-`` lowest, and abstains on the rest. If training is
``(epsilon, delta)``-DP, the number of correct guesses among ``r = k+ + k-`` is
stochastically dominated by Binomial(r, e^eps / (1 + e^eps)), up to a ``delta`` term
(their Theorem 5.2; the p-value below is their Algorithm 2, ``p_value_DP_audit``). So
``v`` correct guesses with p-value below ``beta`` refute every epsilon up to the bound,
at confidence ``1 - beta``.

The guess counts are fixed before looking at the scores (:func:`guess_options`) and the
confidence is split among them (a union bound), so the largest of the bounds is itself
a bound at ``1 - beta``. Each count is tried on both ends (half on the top scores, half
on the bottom ones) and on the top only: with sampled clients, an included canary that
was never sampled looks excluded, so "excluded" guesses are the weaker ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from privfl.errors import ConfigError

GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Fractions of the canaries the auditor guesses on (see :func:`guess_options`)."""

BISECTION_STEPS = 60
"""Halvings of the epsilon interval: 2^-60 of its width, below float precision."""


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability of ``correct`` or more right guesses out of ``guesses`` when training
    is ``(epsilon, delta)``-DP (Steinke et al. 2023, Algorithm 2).

    It is ``P[Binomial(r, q) >= v] + 2 m delta * max_i P[v - i <= Binomial(r, q) < v] / i``
    with ``q = e^eps / (1 + e^eps)``, the accuracy of epsilon-DP randomized response.
    """
    if not 0 <= correct <= guesses <= canaries:
        raise ConfigError(
            "guesses", (canaries, guesses, correct), "0 <= correct <= guesses <= canaries"
        )
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, q))
    if correct == 0 or delta == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, q)  # v-1, v-2, ..., 0
    spread = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(1.0, tail + 2 * canaries * delta * spread)


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, *, beta: float, delta: float
) -> float:
    """The largest epsilon whose p-value for ``correct`` of ``guesses`` is below ``beta``
    (0 when even epsilon = 0 is not refuted), found by bisection."""
    if not 0 < beta < 1:
        raise ConfigError("beta", beta, "a number in (0, 1), one minus the confidence")
    if p_value(canaries, guesses, correct, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(canaries, guesses, correct, high, delta) < beta:
        low, high = high, 2 * high
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if p_value(canaries, guesses, correct, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class OneRunBound:
    """The one-run audit's result.

    :ivar epsilon: The lower bound, at confidence ``1 - beta``.
    :ivar beta: One minus the confidence.
    :ivar canaries: ``m``, the canaries randomized.
    :ivar guesses: ``r``, the guesses of the best guess count.
    :ivar correct: ``v``, how many of them were right.
    :ivar positive: ``k+``, how many of the guesses said "included" (on the top scores).
    """

    epsilon: float
    beta: float
    canaries: int
    guesses: int
    correct: int
    positive: int = 0


def guess_options(
    canaries: int, fractions: Sequence[float] = GUESS_FRACTIONS
) -> list[tuple[int, int]]:
    """The ``(k+, k-)`` guess counts tried on ``canaries`` canaries: for each fraction's
    count ``r``, ``(r // 2, r - r // 2)`` (both ends) and ``(r, 0)`` (top only), as long
    as the top-only guesses fit in half the canaries."""
    options = set()
    for fraction in fractions:
        guesses = min(canaries, max(2, round(fraction * canaries)))
        options.add((guesses // 2, guesses - guesses // 2))
        if guesses <= canaries // 2:
            options.add((guesses, 0))
    return sorted(options)


def one_run_lower_bound(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    beta: float,
    delta: float,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> OneRunBound:
    """Guess from ``scores`` which canaries were ``included``; return the best bound.

    :param scores: One score per canary, higher for "more likely included" (a cosine).
    :param included: Whether each canary was included (drawn with probability 1/2).
    :param fractions: Guess counts as fractions of the canaries, fixed in advance; the
        confidence is split evenly among the :func:`guess_options` they give.
    """
    scores = np.asarray(scores, dtype=float)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1 or not np.isfinite(scores).all():
        raise ConfigError("scores", scores.shape, f"one finite score per canary {included.shape}")
    m = len(scores)
    order = np.argsort(scores, kind="stable")  # lowest first
    options = guess_options(m, fractions)
    best = OneRunBound(0.0, beta, m, 0, 0)
    for positive, negative in options:
        correct = int(included[order[m - positive :]].sum()) + int(
            (~included[order[:negative]]).sum()
        )
        guesses = positive + negative
        bound = epsilon_lower_bound(m, guesses, correct, beta=beta / len(options), delta=delta)
        if bound > best.epsilon:
            best = OneRunBound(bound, beta, m, guesses, correct, positive)
    return best


def ceiling(
    canaries: int, *, beta: float, delta: float, fractions: Sequence[float] = GUESS_FRACTIONS
) -> float:
    """The largest bound :func:`one_run_lower_bound` can give (every guess right): more
    than this no audit with ``canaries`` canaries can show."""
    options = guess_options(canaries, fractions)
    return max(
        epsilon_lower_bound(canaries, p + n, p + n, beta=beta / len(options), delta=delta)
        for p, n in options
    )
