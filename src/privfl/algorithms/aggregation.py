"""Aggregation rules as pure functions over stacked updates.

Each rule takes the round's updates stacked as a ``[n_clients, dim]`` tensor and
returns one ``[dim]`` update, with vector operations only. The registered aggregator
classes in :mod:`privfl.builtin.aggregators` are thin adapters around these.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from privfl.errors import ConfigError


def fedavg(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the updates (FedAvg, McMahan et al. 2017, Algorithm 1).

    "Communication-Efficient Learning of Deep Networks from Decentralized Data"
    weights each client's update by its number of examples ``n_k / n``.

    :param updates: ``[n_clients, dim]`` updates.
    :param weights: ``[n_clients]`` non-negative weights, not all zero.
    """
    if updates.ndim != 2 or weights.shape != updates.shape[:1]:
        raise ValueError(
            f"expected updates [n, dim] and weights [n], got {tuple(updates.shape)} "
            f"and {tuple(weights.shape)}"
        )
    total = weights.sum()
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {float(total)}")
    return (weights.to(updates.dtype) / total.to(updates.dtype)) @ updates


# --- Byzantine-robust rules -------------------------------------------------------------

_SORT_COLUMNS = 4096
"""Most coordinates per sorted block (see :func:`_mean_of_sorted_positions`)."""

_SORT_VALUES = 409_600
"""Most values per sorted block: 4096 coordinates of 100 clients, 1.6 MB in float32 for
the copied rows and as much for their transpose, which stay in the cache of the core
that copies, transposes, sorts and reduces them (fewer coordinates for more clients)."""

_ROW_PADDING = 16
"""Extra values per row of the copied rows, so that the rows are not a power of two
bytes apart: reading a column of them would otherwise fall in one cache set n times."""

_GEMV_VALUES = 8192
"""Most values per matrix-vector product in the reduction. OpenBLAS computes larger ones
with its own threads (from 9,216 values in older versions, 460,800 in 0.3.31), which
then spin against the sorting threads: 3x slower on two cores."""

_GRAM_COLUMNS = 8192
"""Coordinates per float64 block of the Gram matrix (100 clients: 6.5 MB per block)."""


def check_trim_fraction(trim_fraction: float) -> float:
    """Return ``trim_fraction`` as a float; outside ``[0, 0.5)`` is a ConfigError."""
    if not (
        isinstance(trim_fraction, (int, float))
        and not isinstance(trim_fraction, bool)
        and 0 <= trim_fraction < 0.5
    ):
        raise ConfigError(
            "trim_fraction",
            trim_fraction,
            "a number in [0, 0.5), so that 2 * floor(trim_fraction * n) < n "
            "for any number n of updates received",
        )
    return float(trim_fraction)


def trim_count(num_updates: int, trim_fraction: float) -> int:
    """Return ``k = floor(trim_fraction * num_updates)``, the values cut at each end.

    :raises ConfigError: when ``trim_fraction`` is outside ``[0, 0.5)`` or
        ``2 * k < num_updates`` fails (nothing would be left to average).
    """
    trim_fraction = check_trim_fraction(trim_fraction)
    k = math.floor(trim_fraction * num_updates)
    if not 2 * k < num_updates:
        raise ConfigError(
            "trim_fraction",
            trim_fraction,
            f"2 * floor(trim_fraction * updates received) < updates received, but with "
            f"{num_updates} updates floor({trim_fraction} * {num_updates}) = {k} and "
            f"2 * {k} = {2 * k} is not < {num_updates}",
        )
    return k


def check_byzantine(byzantine: int, num_updates: int | None = None) -> int:
    """Check Krum's number of Byzantine clients ``f``, against ``num_updates`` if given.

    Krum needs ``2 * f + 2 < n`` (Blanchard et al. 2017, Proposition 1): each score
    sums the distances to the ``n - f - 2`` nearest other updates.

    :raises ConfigError: naming the bound, the number of updates received, the largest
        ``f`` they allow and how many updates ``f`` would need.
    """
    if not (isinstance(byzantine, int) and not isinstance(byzantine, bool) and byzantine >= 0):
        raise ConfigError("byzantine", byzantine, "an integer >= 0")
    if num_updates is not None and not 2 * byzantine + 2 < num_updates:
        largest = (num_updates - 3) // 2
        allows = (
            f"with {num_updates} updates byzantine can be at most {largest}"
            if largest >= 0
            else f"{num_updates} updates are too few for any byzantine (Krum needs 3)"
        )
        needed = 2 * byzantine + 3
        raise ConfigError(
            "byzantine",
            byzantine,
            f"2 * byzantine + 2 < updates received, but 2 * {byzantine} + 2 = "
            f"{2 * byzantine + 2} is not < {num_updates}: {allows}; byzantine = {byzantine} "
            f"needs at least {needed} updates (short by {needed - num_updates})",
        )
    return byzantine


def check_selected(selected: int, num_updates: int | None = None) -> int:
    """Check Multi-Krum's number of selected updates (0 means ``n - byzantine``)."""
    if not (isinstance(selected, int) and not isinstance(selected, bool) and selected >= 0):
        raise ConfigError("selected", selected, "an integer >= 0 (0: updates received - byzantine)")
    if num_updates is not None and selected > num_updates:
        raise ConfigError(
            "selected",
            selected,
            f"at most the number of updates received ({num_updates}), "
            f"short by {selected - num_updates}",
        )
    return selected


def _check_stack(updates: torch.Tensor) -> None:
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise ValueError(f"expected updates [n >= 1, dim], got {tuple(updates.shape)}")


def _mean_of_sorted_positions(updates: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """Per coordinate, the mean of its values at sorted positions ``first .. stop - 1``.

    The ``n`` values of each coordinate are sorted ascending and the ``m = stop - first``
    values between the cut points averaged with weights ``1 / m`` (so that huge values
    cannot overflow their sum); values outside are never added, whatever they are.

    Sorting the ``[n, dim]`` stack along its (strided) first dimension, or topk and
    kthvalue on the transposed stack, cost 30-200x FedAvg on the McMahan CNN (rows of
    100 values are too short for torch's per-row algorithms), and ``np.partition`` of a
    row is slower than numpy's vectorised sort of it (1.3x with one ``kth``, 18x with
    the two that trimming needs). Instead, the coordinates are cut into blocks: each
    block's rows are copied into a buffer (sequential reads), transposed from there
    into a ``[columns, n]`` buffer that stays in the cache, sorted along its rows in
    place (vectorised quicksort for float32/float64 on x86 since numpy 2.0) and reduced
    by small matrix-vector products. Transposing straight out of the stack reads ``n``
    rows at once, which the prefetcher does not follow: up to 1.8x slower for the copy.

    One thread per torch thread (numpy and BLAS release the GIL) takes the next block
    from a shared counter, so a thread slowed by another process does fewer blocks
    instead of holding the others up. Each block is reduced on its own, in the same
    order, so the result does not depend on the threads.
    """
    _check_stack(updates)
    n, dim = updates.shape
    source = updates.detach()
    if source.dtype not in (torch.float32, torch.float64):
        source = source.float()
    array = source.cpu().contiguous().numpy()
    out = np.empty(dim, dtype=array.dtype)
    m = stop - first
    weights = np.full(m, 1.0 / m, dtype=array.dtype)
    gemv_rows = max(1, _GEMV_VALUES // m)
    width = max(1, min(_SORT_COLUMNS, _SORT_VALUES // n, dim))
    starts = iter(range(0, dim, width))
    lock = threading.Lock()
    workers = max(1, min(torch.get_num_threads(), -(-dim // width)))

    def work() -> None:
        rows = np.empty((n, width + _ROW_PADDING), dtype=array.dtype)
        block = np.empty((width, n), dtype=array.dtype)
        while True:
            with lock:
                start = next(starts, None)
            if start is None:
                return
            stop_column = min(start + width, dim)
            count = stop_column - start
            np.copyto(rows[:, :count], array[:, start:stop_column])
            sorted_rows = block[:count]
            np.copyto(sorted_rows, rows[:, :count].T)
            sorted_rows.sort(axis=1)
            kept = sorted_rows[:, first:stop]
            result = out[start:stop_column]
            whole = count // gemv_rows * gemv_rows
            if whole:
                np.matmul(
                    kept[:whole].reshape(-1, gemv_rows, m),
                    weights,
                    out=result[:whole].reshape(-1, gemv_rows),
                )
            if whole < count:
                np.matmul(kept[whole:], weights, out=result[whole:])

    if workers == 1:
        work()
    else:
        with ThreadPoolExecutor(workers - 1) as pool:
            helpers = [pool.submit(work) for _ in range(workers - 1)]
            work()
            for helper in helpers:
                helper.result()
    return torch.from_numpy(out).to(device=updates.device, dtype=updates.dtype)


def trimmed_mean(updates: torch.Tensor, trim_fraction: float) -> torch.Tensor:
    """Coordinate-wise trimmed mean (Yin et al. 2018, Definition 2).

    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates" (ICML
    2018): for every coordinate, remove the ``k = floor(trim_fraction * n)`` largest
    and ``k`` smallest of the ``n`` values and average the remaining ``n - 2k``. It
    tolerates up to ``k`` arbitrary updates; with ``k = 0`` it is the plain mean. The
    clients' weights are not used.

    The removed values are masked out by sorting, not subtracted from a sum, so huge
    (even infinite or NaN) values among the ``k`` at either end cannot cancel the
    others' digits. With 100 clients of the McMahan CNN it costs about 4.8x FedAvg on
    two cores (``bench/aggregation_speed.py``).

    :param updates: ``[n_clients, dim]`` updates.
    :param trim_fraction: ``beta`` in ``[0, 0.5)``.
    :raises ConfigError: when ``trim_fraction`` is outside ``[0, 0.5)``.
    """
    _check_stack(updates)
    n = updates.shape[0]
    k = trim_count(n, trim_fraction)
    if k == 0:
        return updates.mean(dim=0)
    return _mean_of_sorted_positions(updates, k, n - k)


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median (Yin et al. 2018, Definition 1).

    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates" (ICML
    2018). For an even number of updates the median of a coordinate is the mean of its
    two middle values, each weighted 1/2 so that two huge values cannot overflow their
    sum (``torch.median`` would return the lower one). It tolerates fewer than ``n / 2``
    arbitrary updates. The clients' weights are not used.

    :param updates: ``[n_clients, dim]`` updates.
    """
    _check_stack(updates)
    n = updates.shape[0]
    return _mean_of_sorted_positions(updates, (n - 1) // 2, n // 2 + 1)


def pairwise_squared_distances(updates: torch.Tensor) -> torch.Tensor:
    """Return the ``[n, n]`` float64 squared Euclidean distances between the updates.

    Computed from the Gram matrix, ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``, accumulated in
    float64 over blocks of coordinates (products of float32 values are exact in
    float64, so only the sums round), and clamped at 0.

    :raises ValueError: when an update holds NaN or infinite values.
    """
    _check_stack(updates)
    n, dim = updates.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    for start in range(0, dim, _GRAM_COLUMNS):
        block = updates[:, start : start + _GRAM_COLUMNS].detach().to(torch.float64)
        gram.addmm_(block, block.T)
    norms = gram.diagonal()
    if not bool(torch.isfinite(norms).all()):
        raise ValueError("Krum needs finite updates; screen out NaN and infinite values first")
    distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp_(min=0)
    return distances.fill_diagonal_(0)


def krum_scores(updates: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Return each update's Krum score (Blanchard et al. 2017, Section 4), float64 ``[n]``.

    The score of update ``i`` is the sum of its squared distances to its ``n - f - 2``
    nearest other updates, ``f = byzantine``.

    :raises ConfigError: unless ``2 * byzantine + 2 < n``.
    """
    _check_stack(updates)
    n = updates.shape[0]
    check_byzantine(byzantine, n)
    distances = pairwise_squared_distances(updates)
    distances.fill_diagonal_(math.inf)
    nearest = torch.topk(distances, n - byzantine - 2, dim=1, largest=False).values
    return nearest.sum(dim=1)


def krum(updates: torch.Tensor, byzantine: int) -> torch.Tensor:
    """Krum (Blanchard et al. 2017): the update with the lowest Krum score.

    "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS
    2017): with ``f = byzantine`` Byzantine updates among ``n``, each update is scored
    by the sum of squared distances to its ``n - f - 2`` nearest other updates (see
    :func:`krum_scores`) and the lowest-scoring one is returned as it is (ties: the
    first). Needs ``2f + 2 < n``. The clients' weights are not used.

    :raises ConfigError: unless ``2 * byzantine + 2 < n``.
    """
    scores = krum_scores(updates, byzantine)
    return updates[int(torch.argmin(scores))].clone()


def multi_krum(updates: torch.Tensor, byzantine: int, selected: int = 0) -> torch.Tensor:
    """Multi-Krum (Blanchard et al. 2017, Section 5): mean of the best-scoring updates.

    "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS
    2017): the unweighted mean of the ``m = selected`` updates with the lowest Krum
    scores (:func:`krum_scores`; ties: the first). ``selected = 0`` means
    ``m = n - byzantine``; ``m = 1`` is Krum and ``m = n`` the plain mean.

    :raises ConfigError: unless ``2 * byzantine + 2 < n`` and ``selected <= n``.
    """
    _check_stack(updates)
    n = updates.shape[0]
    check_byzantine(byzantine, n)
    m = check_selected(selected, n) or n - byzantine
    chosen = torch.argsort(krum_scores(updates, byzantine), stable=True)[:m]
    weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    weights[chosen] = 1.0 / m
    # Rows left out are finite (checked with the distances), so their weight 0 is exact.
    return weights @ updates
