"""Compression of client updates as pure math, on stacked ``[n_clients, dim]`` tensors.

- **QSGD** (Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, "QSGD: Communication-Efficient
  SGD via Gradient Quantization and Encoding", NeurIPS): each coordinate of ``v`` becomes
  ``||v|| * sign(v_i) * xi_i``, where ``xi_i`` rounds ``s * |v_i| / ||v||`` to one of
  the two nearest of ``s`` levels at random, so that ``E[Q(v)] = v`` (unbiased) and
  ``E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) * ||v||^2`` (their Lemma 3.1).
- **Randomized Hadamard rotation** (Suresh, Yu, Kumar, McMahan 2017, "Distributed Mean
  Estimation with Limited Communication", ICML; also Konečný et al. 2016): multiplying
  by random signs and then by the orthonormal Walsh-Hadamard matrix spreads a vector's
  mass over all coordinates, so few-bit quantization loses less; the rotation is
  orthogonal and its own inverse up to the signs.
- **Top-k with error feedback** (Stich, Cordonnier, Jaggi 2018, "Sparsified SGD with
  Memory", NeurIPS; Karimireddy, Rebjock, Stich, Jaggi 2019, "Error Feedback Fixes
  SignSGD and other Gradient Compression Schemes", ICML): send the ``k`` largest
  coordinates of ``update + residual`` and keep what was not sent as the next
  residual, so ``sent + new residual = update + old residual``.
- **Random-mask subsampling** (Konečný, McMahan, Yu, Richtárik, Suresh, Bacon 2016,
  "Federated Learning: Strategies for Improving Communication Efficiency"): a client
  sends the values at a seeded Bernoulli mask of rate ``p``; scaled by ``1 / p`` the
  server's estimate is unbiased.

Their byte formats (bit packing, index sets) are in :mod:`privfl.algorithms.bit_coding`.
Nothing here keeps state or knows about rounds; :mod:`privfl.builtin.compressors`
adapts these functions to the client and server halves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

MIN_BLOCK = 64
"""The smallest Hadamard block: vectors are padded to a multiple of it (see
:func:`hadamard_blocks`)."""

# --- QSGD -------------------------------------------------------------------------------


def qsgd_levels(bits: int) -> int:
    """The number of levels ``s`` that ``bits`` bits per coordinate hold with a sign:
    codes ``-s .. s`` are ``2 s + 1 <= 2**bits`` values."""
    return 2 ** (bits - 1) - 1


Randomness = torch.Generator | torch.Tensor
"""What a stochastic quantizer draws from: a generator, or the uniform draws in ``[0, 1)``
themselves, one per coordinate (see :func:`row_uniforms`)."""


def row_uniforms(
    shape: Sequence[int], generators: Sequence[torch.Generator], dtype: torch.dtype
) -> torch.Tensor:
    """Uniform draws in ``[0, 1)`` of shape ``[n, dim]``, row ``k`` from ``generators[k]``:
    the numbers that ``torch.rand((1, dim), generator=generators[k], dtype=dtype)``
    gives, so clients quantized together get what each would get alone."""
    draws = torch.empty(tuple(shape), dtype=dtype)
    for row, generator in zip(draws, generators, strict=True):
        row.uniform_(generator=generator)
    return draws


def qsgd_quantize(
    x: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """QSGD (Alistarh et al. 2017, Section 3.1) of each row of ``x`` (``[n, dim]``).

    Returns the rows' L2 norms ``[n]`` and int32 codes ``[n, dim]`` in ``-s .. s``
    (``s = levels``); :func:`dequantize` turns them back into an unbiased
    estimate of ``x``.
    """
    return stochastic_quantize(x, torch.linalg.vector_norm(x, dim=1), levels, randomness)


def max_quantize(
    x: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic ``2 s + 1``-level quantization of each row over ``[-max|x|, max|x|]``:
    Suresh et al. 2017's stochastic k-level quantization (their range is ``[min, max]``;
    a range symmetric about zero keeps QSGD's codes). After a random rotation the
    largest coordinate is about ``||x|| sqrt(log(dim) / dim)``, so the error is about
    ``log(dim) / s^2 * ||x||^2``, where QSGD's norm scale gives ``sqrt(dim) / s``.
    """
    return stochastic_quantize(x, x.abs().amax(dim=1), levels, randomness)


def stochastic_quantize(
    x: torch.Tensor, scales: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``round_random(s * x / scale)`` of each row with its ``scale >= max|x|``:
    each value goes to one of its two nearest levels, the upper one with probability
    equal to its distance from the lower, so the estimate ``scale * code / s`` is
    unbiased. Returns ``scales`` (as given) and the codes."""
    if isinstance(randomness, torch.Generator):
        randomness = torch.rand(x.shape, generator=randomness, dtype=x.dtype)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    scaled = x.abs().div_(safe[:, None]).mul_(levels).clamp_(max=levels)
    lower = scaled.floor()
    up = randomness < scaled.sub_(lower)  # scaled now holds the distance to the lower level
    # copysign, not a product with sign(x): where x is 0 the magnitude is 0 either way
    codes = lower.add_(up).copysign_(x)
    return scales, codes.to(torch.int32)


def dequantize(scales: torch.Tensor, codes: torch.Tensor, levels: int) -> torch.Tensor:
    """The estimate ``scale * code / s`` of each row of :func:`stochastic_quantize`."""
    return scales[:, None] * (codes.to(scales.dtype) / levels)


def qsgd_variance_bound(dim: int, levels: int) -> float:
    """Alistarh et al. 2017, Lemma 3.1: ``E||Q(v) - v||^2 <= this * ||v||^2``."""
    return min(dim / levels**2, math.sqrt(dim) / levels)


def nearest_quantize(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round each row of ``x`` to the nearest of ``2 s + 1`` levels over ``[-max|x|,
    max|x|]``: biased, for use with error feedback, which carries the rounding to the
    next round (Karimireddy et al. 2019). Returns the scales ``[n]`` and the codes;
    :func:`dequantize` inverts."""
    scales = x.abs().amax(dim=1)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    return scales, torch.round(x / safe[:, None] * levels).to(torch.int64)


# --- Randomized Hadamard rotation -------------------------------------------------------


def hadamard_blocks(dim: int) -> list[int]:
    """Sizes of the Hadamard blocks that rotate a vector of ``dim`` coordinates.

    The vector is padded to a multiple of :data:`MIN_BLOCK`, and that length is cut
    into the powers of two of its binary expansion (largest first). Padding to one
    power of two, as in Suresh et al., can nearly double what a client sends (the
    2NN's 199,210 parameters would be 262,144 codes); blocks cost at most 63 padded
    coordinates and rotate the bulk of the vector in its largest block.
    """
    padded = -(-dim // MIN_BLOCK) * MIN_BLOCK
    return [1 << b for b in reversed(range(padded.bit_length())) if padded >> b & 1]


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of each row of ``x`` (``[n, 2**k]``).

    ``H_m`` is the Kronecker product of small Hadamard matrices (``H_64 (x) H_64 (x)
    ...``), so the transform is one small matrix product per factor along its axis of
    the row reshaped into a grid: ``O(n m log m)`` work done by BLAS. torch has no
    Hadamard transform on CPU, hence this one. The transform is its own inverse.

    Rows are transformed one at a time: a matrix product's rounding can depend on how
    many rows it multiplies, and a client's rotated update must not depend on the
    clients stacked beside it.
    """
    n, m = x.shape
    if m & (m - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, not {m}")
    factors = []
    rest = m
    while rest > 1:
        factors.append(min(rest, _HADAMARD_FACTOR))
        rest //= factors[-1]
    matrices = [_hadamard_matrix(size, x.dtype) for size in factors]
    rows = []
    for y in x.split(1):
        after = m
        for size, matrix in zip(factors, matrices, strict=True):
            after //= size
            if after == 1:  # the last factor: one product on the last axis (H is
                # symmetric; multiplying by H.T is torch.matmul's own arithmetic for
                # H y, without its many matrix-vector products)
                y = y.reshape(-1, size) @ matrix.mT
            else:  # the row as [before, size, after]: H_size acts on the middle axis
                y = torch.matmul(matrix, y.reshape(-1, size, after))
        rows.append(y.reshape(1, m))
    return (rows[0] if n == 1 else torch.cat(rows)) / math.sqrt(m)


_HADAMARD_FACTOR = 64


def _hadamard_matrix(size: int, dtype: torch.dtype) -> torch.Tensor:
    """Sylvester's unnormalised ``size x size`` Hadamard matrix of +-1."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(dim: int, generator: torch.Generator) -> torch.Tensor:
    """The diagonal of Suresh et al.'s random sign matrix ``D`` for the padded length of
    ``dim`` coordinates (see :func:`hadamard_blocks`), as float32 ``+-1``."""
    padded = sum(hadamard_blocks(dim))
    return torch.randint(0, 2, (padded,), generator=generator).mul_(2).sub_(1).float()


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H D x`` for each row of ``x`` (``[n, dim]``): pad, flip signs, transform blocks."""
    blocks = hadamard_blocks(x.shape[1])
    padded = torch.nn.functional.pad(x, (0, sum(blocks) - x.shape[1])) * signs
    return torch.cat([walsh_hadamard(part) for part in padded.split(blocks, dim=1)], dim=1)


def unrotate(y: torch.Tensor, signs: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: ``D H y``, cut back to ``dim`` coordinates."""
    blocks = hadamard_blocks(dim)
    back = torch.cat([walsh_hadamard(part) for part in y.split(blocks, dim=1)], dim=1) * signs
    return back[:, :dim]


# --- Sparsification ---------------------------------------------------------------------


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest-magnitude coordinates of each row of ``x``: sorted indices
    ``[n, k]`` and their values.

    Each row's ``k``-th largest magnitude comes from numpy's ``partition`` (linear-time
    selection, several times faster than ``torch.topk`` on CPU), and the coordinates at
    or above it are the ``k`` largest when it is not tied. Where it is (or a row holds
    NaN), ``torch.topk`` chooses among the tied coordinates.
    """
    magnitudes = x.abs()
    (n, dim), array = x.shape, magnitudes.numpy()
    chosen = array >= np.partition(array, dim - k, axis=1)[:, dim - k, None]
    # Flat positions, each row's k of them in [row * dim, (row + 1) * dim) when no row
    # is tied: half the time of np.nonzero's row and column pairs.
    flat, starts = np.flatnonzero(chosen), np.arange(0, n * dim, dim)
    rows = flat.reshape(n, k) if len(flat) == n * k else None
    if rows is not None and bool(((rows[:, 0] >= starts) & (rows[:, -1] < starts + dim)).all()):
        indices = torch.from_numpy(rows - starts[:, None])
    else:
        indices = magnitudes.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return indices, x.gather(1, indices)


def densify(indices: torch.Tensor, values: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows of ``dim`` zeros holding ``values`` at ``indices`` (both ``[n, k]``)."""
    return values.new_zeros(values.shape[0], dim).scatter_(1, indices, values)


def error_feedback(corrected: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """The new residual ``corrected - sent`` (Karimireddy et al. 2019, Algorithm 2), where
    ``corrected = update + old residual`` and ``sent`` is what the server will decode.

    For top-k, and for values rounded to float16, the subtraction is exact in float32
    (the two are equal, zero, or within a factor of two: Sterbenz's lemma), so
    ``sent + residual == update + old residual`` holds to the bit.
    """
    return corrected - sent


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

    Each coordinate draws 16 random bits from numpy's PCG64 seeded with ``seed`` (four
    to a 64-bit word) and is kept when they fall below ``rate * 2**16``: far cheaper
    than a random permutation, and PCG64's raw stream is the same on every platform
    and numpy version, so the server regenerates the mask from the seed alone.
    """
    threshold = round(mask_rate(fraction) * MASK_RESOLUTION)
    if threshold == MASK_RESOLUTION:
        return torch.arange(dim)
    words = np.random.PCG64(seed).random_raw(-(-dim // 4))
    draws = np.ascontiguousarray(words, dtype="<u8").view("<u2")[:dim]
    return torch.from_numpy(np.flatnonzero(draws < threshold))
