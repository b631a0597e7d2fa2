"""Neighbourhood size k and Shamir threshold t from the dropout and corruption rates.

The user states a dropout rate delta (the fraction of a round's ``n`` clients that may
drop out) and a corruption rate gamma (the fraction that may collude with the server).
With ``D = floor(delta n)`` dropouts and ``C = floor(gamma n)`` corrupted clients, chosen
independently of the random graph, a client's k neighbours are a uniformly random
k-subset of the ``n - 1`` others, so the number of its dropped (corrupted) neighbours
is hypergeometric: ``HG(n - 1, D, k)`` (``HG(n - 1, C, k)``), counted exactly with
integers here. Following Bell et al. 2020 ("Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS, semi-honest setting) and the parameter search of
Google's implementation (federated-compute, ``fcp/secagg/server/graph_parameter_finder.cc``),
a pair (k, t) is accepted when

* correctness: ``n * P[HG(n - 1, n - 1 - D, k) < t] <= 2^-eta`` -- by a union bound over
  the ``n`` clients, every client keeps at least t surviving neighbours to recover its
  secrets from, except with probability ``2^-eta``;
* security, (a): ``n * P[HG(n - 1, C, k) >= t] <= 2^-(sigma + 1)`` -- no client has
  t corrupted neighbours, who with the server could rebuild its self-mask seed and its
  masking key together and so unmask its input;
* security, (b), for ``k < n - 1``: the union bound over pairs of gaps that
  ``P[H(n, k) minus the D + C bad nodes is disconnected] <= 2^-(sigma + 1)`` -- if the
  honest survivors split into components, the masks would cancel within each and the
  server would learn partial sums. H(n, k) falls apart only when two runs of k/2
  consecutive nodes are removed: at most ``n (n - k - 1) / 2`` pairs of runs, each
  removed with probability ``C(n - k, D + C - k) / C(n, D + C)``.

(a) and (b) together bound the failure of security by ``2^-sigma``. Of the thresholds
that pass, the largest is returned: if more clients drop than stated the round aborts
(visibly, see :class:`~privfl.secagg.server.SecAggAborted`), while if more are corrupted
than stated the larger t keeps privacy for longer (Google's code returns the smallest
to save computation; privfl prefers the margin on privacy). Corrupted clients follow
the protocol (semi-honest); one that withholds its shares counts as a dropout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from privfl.errors import ConfigError

_TOLERANCE = 1e-9  # so that 0.3 * 10 counts 3 clients, not 2
_LINEAR_SEARCH = 32  # even degrees 2 .. 64 are tried one by one


def secagg_plus_parameters(
    n: int, *, dropout_rate: float, corruption_rate: float, sigma: int = 40, eta: int = 30
) -> tuple[int, int]:
    """The smallest even degree k, and the largest threshold t, meeting the criterion above.

    Degrees up to 64 are tried one by one; above, the search gallops and bisects, which
    assumes that once a degree works the larger ones do too (true but for rounding
    effects, so k may then be a little above the smallest). The pair returned always
    meets the criterion, checked exactly.

    :param n: Clients in the round.
    :param dropout_rate: delta, the fraction of them that may drop out, in [0, 1).
    :param corruption_rate: gamma, the fraction that may collude with the server, in [0, 1).
    :param sigma: Security parameter: privacy fails with probability at most 2^-sigma.
    :param eta: Correctness parameter: a round fails with probability at most 2^-eta.
    :returns: ``(k, t)``; ``k = n - 1`` is the complete graph (plain SecAgg), used when no
        smaller even degree works.
    :raises ConfigError: naming the rates when even the complete graph does not work.
    """
    dropped, corrupted = _counts(n, dropout_rate, corruption_rate)
    for key, value in (("sigma", sigma), ("eta", eta)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(key, value, "an integer >= 1 (bits of security or correctness)")
    # If the complete graph fails, no sparse one works: with n - 1 - D <= C a client's
    # surviving neighbours are never more than its corrupted ones can be.
    complete = _threshold(n, n - 1, dropped, corrupted, sigma, eta)
    if complete is None:
        raise _infeasible(n, dropout_rate, corruption_rate, dropped, corrupted, sigma, eta)

    def works(k: int) -> int | None:
        if not _connected(n, k, dropped + corrupted, sigma):
            return None
        return _threshold(n, k, dropped, corrupted, sigma, eta)

    degrees = range(2, n - 1, 2)
    for k in degrees[:_LINEAR_SEARCH]:
        t = works(k)
        if t is not None:
            return k, t
    # Above the first degrees, gallop then bisect (each check costs O(k) big-integer
    # steps; scanning every even k up to n would cost O(n^2) of them).
    low, high = _LINEAR_SEARCH - 1, _LINEAR_SEARCH
    while high < len(degrees) and works(degrees[high]) is None:
        low, high = high, 2 * high
    high = min(high, len(degrees))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if works(degrees[middle]) is not None else (middle, high)
    if high < len(degrees):
        t = works(degrees[high])
        if t is not None:
            return degrees[high], t
    return n - 1, complete


def secagg_threshold(n: int, *, dropout_rate: float, corruption_rate: float) -> int:
    """The threshold t of plain SecAgg (complete graph) for the stated rates.

    The same criterion with k = n - 1: every client's neighbours are all the others, so
    the counts are certain and the probabilities 0 or 1. The result is ``t = n - 1 - D``
    (every client can still collect t shares after D dropouts), accepted when
    ``t > C`` (the C corrupted clients cannot reach the threshold).

    :raises ConfigError: naming the rates when ``n - 1 - D <= C``.
    """
    dropped, corrupted = _counts(n, dropout_rate, corruption_rate)
    t = _threshold(n, n - 1, dropped, corrupted, 0, 0)
    if t is None:
        raise _infeasible(n, dropout_rate, corruption_rate, dropped, corrupted, 0, 0)
    return t


def _counts(n: int, dropout_rate: float, corruption_rate: float) -> tuple[int, int]:
    if not (isinstance(n, int) and n >= 2):
        raise ConfigError("num_clients", n, "an integer >= 2")
    for key, rate in (("dropout_rate", dropout_rate), ("corruption_rate", corruption_rate)):
        if not (math.isfinite(rate) and 0 <= rate < 1):
            raise ConfigError(key, rate, "a fraction in [0, 1)")
    return math.floor(dropout_rate * n + _TOLERANCE), math.floor(corruption_rate * n + _TOLERANCE)


def _threshold(n: int, k: int, dropped: int, corrupted: int, sigma: int, eta: int) -> int | None:
    """The largest t meeting correctness and security (a) for degree k, or None."""
    total = math.comb(n - 1, k)
    # Security (a): the smallest t with n * P[#corrupted neighbours >= t] * 2^(sigma+1) <= 1.
    smallest, tail = k + 1, 0
    for hits, weight in _upper_tail(n - 1, corrupted, k):
        smallest = min(smallest, hits + 1)
        tail += weight
        if n * tail << (sigma + 1) > total:
            break
        smallest = hits
    # Correctness: the largest t with n * P[#surviving neighbours < t] * 2^eta <= 1; fewer
    # than t survive exactly when at least k - t + 1 neighbours dropped.
    largest, tail = 0, 0
    for hits, weight in _upper_tail(n - 1, dropped, k):
        largest = max(largest, k - hits)
        tail += weight
        if n * tail << eta > total:
            break
        largest = k - hits + 1
    largest = min(largest, k)
    return largest if 1 <= smallest <= largest else None


def _upper_tail(population: int, marked: int, draws: int) -> Iterator[tuple[int, int]]:
    """``(i, C(population, draws) * P[HG = i])`` for i from the largest possible down.

    HG is the hypergeometric number of marked items among ``draws`` drawn without
    replacement. The integer weights ``C(marked, i) C(population - marked, draws - i)``
    follow from one another exactly: each step multiplies by the ratio of neighbours
    and divides exactly, so a tail costs O(draws) cheap steps instead of binomials.
    """
    top = min(marked, draws)
    bottom = max(0, draws - (population - marked))
    weight = math.comb(marked, top) * math.comb(population - marked, draws - top)
    for i in range(top, bottom - 1, -1):
        yield i, weight
        if i > bottom:
            weight = (
                weight
                * i
                * (population - marked - draws + i)
                // ((marked - i + 1) * (draws - i + 1))
            )


def _connected(n: int, k: int, bad: int, sigma: int) -> bool:
    """Security (b): H(n, k) without ``bad`` random nodes is disconnected rarely enough."""
    if bad < k:
        return True
    # pairs * P[one pair of runs removed] <= 2^-(sigma+1), pairs = n (n - k - 1) / 2
    return n * (n - k - 1) * math.comb(n - k, bad - k) << sigma <= math.comb(n, bad)


def _infeasible(
    n: int,
    dropout_rate: float,
    corruption_rate: float,
    dropped: int,
    corrupted: int,
    sigma: int,
    eta: int,
) -> ConfigError:
    bounds = f", sigma = {sigma}, eta = {eta}" if sigma or eta else ""
    return ConfigError(
        "(dropout_rate, corruption_rate)",
        (dropout_rate, corruption_rate),
        f"with {n} clients, {dropped} dropouts and {corrupted} corrupted clients no "
        f"neighbourhood size and threshold meet both the correctness and the security "
        f"bound{bounds}; lower the rates or raise the number of clients per round",
    )
