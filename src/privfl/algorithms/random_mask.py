"""Random-mask subsampling as pure math (Konečný, McMahan, Yu, Richtárik, Suresh, Bacon
2016, "Federated Learning: Strategies for Improving Communication Efficiency"): a client
sends the values at a seeded Bernoulli mask of rate ``p``; scaled by ``1 / p`` the
server's estimate is unbiased. The server draws the same mask from the seed.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba.cpython.unsafe.numbers import trailing_zeros

from privfl.algorithms.compression import random_bits

MASK_RESOLUTION = 2**16
"""A random mask's rate is a multiple of ``1 / MASK_RESOLUTION`` (see :func:`mask_rate`)."""


def mask_rate(fraction: float) -> float:
    """The rate of :func:`random_mask`: ``fraction`` rounded to a multiple of ``2**-16``,
    at least ``2**-16`` (so within ``2**-17`` of it above that)."""
    return min(MASK_RESOLUTION, max(1, round(fraction * MASK_RESOLUTION))) / MASK_RESOLUTION


def random_mask(dim: int, fraction: float, seed: int) -> torch.Tensor:
    """The sorted coordinates of a seeded Bernoulli mask (Konečný et al. 2016's random
    mask): each of the ``dim`` coordinates is in it independently with probability
    :func:`mask_rate` of ``fraction``, so a value scaled by ``1 / rate`` is an unbiased
    estimate and the mask holds ``rate * dim`` coordinates on average.

    Each coordinate draws 16 random bits (:func:`random_bits` of ``seed``) and is kept
    when they fall below ``rate * 2**16``: far cheaper than a random permutation, and
    the same on every platform, so the server regenerates the mask from the seed alone.
    """
    return _masked(dim, fraction, seed, np.zeros(0, np.float32), 1.0)[0]


def masked_values(
    row: torch.Tensor, fraction: float, seed: int, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`random_mask` of ``row``'s length, and ``row``'s float32 values there times
    ``scale``: the kept coordinates counted, then gathered, in two compiled passes over
    the random bits, 0.13 ms for the 2NN's update at a rate of 1/4 (numpy's
    ``flatnonzero`` of the comparison, then torch's ``index_select`` and a product,
    took 0.21 ms)."""
    values = np.ascontiguousarray(row.detach().to(torch.float32).numpy())
    return _masked(len(values), fraction, seed, values, scale)


def _masked(
    dim: int, fraction: float, seed: int, values: np.ndarray, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask's coordinates, and ``values`` there times ``scale`` (none for no
    ``values``)."""
    threshold = round(mask_rate(fraction) * MASK_RESOLUTION)
    if threshold == MASK_RESOLUTION:
        return torch.arange(dim), torch.from_numpy(values * np.float32(scale))
    bits = random_bits(seed, dim)
    count = _mask_count(bits, threshold)
    indices = np.empty(count, np.int64)
    kept = np.empty(count if values.size else 0, np.float32)
    _mask_gather(bits, threshold, values, np.float32(scale), indices, kept)
    return torch.from_numpy(indices), torch.from_numpy(kept)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _mask_count(bits, threshold):
    """How many ``bits`` fall below ``threshold``, in their own width (a Python
    integer's int64 compare and sum did not vectorize, and took three times as long)."""
    below = np.uint16(threshold)
    count = np.uint32(0)
    for i in range(bits.size):
        count += np.uint32(bits[i] < below)
    return count


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _mask_gather(bits, threshold, values, scale, indices, kept):
    """The coordinates whose ``bits`` fall below ``threshold``, and where there are
    ``values``, the values there times ``scale``.

    Each 64 coordinates are compared at once into a bit mask, whose set bits are then
    read lowest first (``trailing_zeros``), as :mod:`privfl.algorithms.top_k` finds its
    candidates: a branch per coordinate on random bits mispredicts, and a branchless
    write of every coordinate at the next free place took 0.21 ms for the 2NN."""
    gather = values.size > 0
    n = 0
    for block in range(-(-bits.size // 64)):
        start = block * 64
        mask = np.uint64(0)
        if start + 64 <= bits.size:  # a constant count, so that the compares vectorize
            for j in range(64):
                mask |= np.uint64(bits[start + j] < threshold) << np.uint64(j)
        else:
            for j in range(bits.size - start):
                mask |= np.uint64(bits[start + j] < threshold) << np.uint64(j)
        while mask:  # about 0.1 ms for the 2NN at a rate of 1/4
            i = start + trailing_zeros(mask)
            indices[n] = i
            if gather:
                kept[n] = values[i] * scale
            n += 1
            mask &= mask - np.uint64(1)
