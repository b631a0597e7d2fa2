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

The rotation itself is in :mod:`privfl.algorithms.hadamard`, the top-k selection in
:mod:`privfl.algorithms.top_k`, random masks in :mod:`privfl.algorithms.random_mask`;
the byte formats (bit packing, index sets) are in
:mod:`privfl.algorithms.bit_coding`.
Nothing here keeps state or knows about rounds; :mod:`privfl.builtin.compressors`
adapts these functions to the client and server halves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
import torch

# --- QSGD -------------------------------------------------------------------------------


def qsgd_levels(bits: int) -> int:
    """The number of levels ``s`` that ``bits`` bits per coordinate hold with a sign:
    codes ``-s .. s`` are ``2 s + 1 <= 2**bits`` values."""
    return 2 ** (bits - 1) - 1


Randomness = torch.Generator | np.ndarray
"""What a stochastic quantizer draws from: a generator, or the random bits themselves,
uint16 ``[n, dim]``, one draw per coordinate (see :func:`random_bits`)."""

RANDOM_BITS = 16
"""Random bits per coordinate of stochastic rounding (see :func:`stochastic_quantize`)."""


def random_bits(seed: int, count: int) -> np.ndarray:
    """``count`` uniform 16-bit draws (uint16) from SplitMix64 seeded with ``seed``, four
    to each 64-bit output, least significant first.

    SplitMix64 (Steele, Lea, Flood 2014, "Fast Splittable Pseudorandom Number
    Generators", OOPSLA) is the ``j``-th output ``mix(seed + j * gamma)`` of a counter,
    so it is the same on every platform and computes every word independently: compiled,
    it fills the 2NN's 199,210 draws in about 0.01 ms and releases the GIL, where
    numpy's PCG64 took 0.12 ms holding it (the encoding threads then queued on it) and
    ``torch.rand`` 1.05 ms. Its authors report that it passes TestU01's BigCrush; the
    draws seed nothing secret, only stochastic rounding and random masks.
    """
    words = np.empty(-(-count // 4), np.uint64)
    _splitmix64(np.uint64(seed % 2**64), words)
    return words.astype("<u8", copy=False).view("<u2")[:count]


SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's increment (Steele et al. 2014): the odd integer nearest ``2**64`` over
the golden ratio."""


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _splitmix64(seed, words):
    """``words[j] =`` SplitMix64's ``(j + 1)``-th output from ``seed``: ``z = seed + (j +
    1) gamma``, then the finalizer ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >>
    27; z *= 0x94D049BB133111EB; z ^= z >> 31`` (all modulo ``2**64``)."""
    gamma = np.uint64(SPLITMIX_GAMMA)
    for j in range(np.uint64(0), np.uint64(words.size)):
        z = seed + (j + np.uint64(1)) * gamma
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        words[j] = z ^ (z >> np.uint64(31))


def draw_seed(generator: torch.Generator) -> int:
    """A seed below ``2**62`` drawn from ``generator``: what each client's random mask,
    projection or stochastic rounding is seeded with."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def qsgd_quantize(
    x: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """QSGD (Alistarh et al. 2017, Section 3.1) of each row of ``x`` (``[n, dim]``).

    Returns the rows' L2 norms ``[n]`` and the codes (see :func:`stochastic_quantize`);
    :func:`dequantize` turns them back into an unbiased estimate of ``x``.
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
    values = np.ascontiguousarray(x.detach().numpy())
    scales = np.empty(len(values), values.dtype)
    codes = _round(values, scales, True, levels, randomness)
    return torch.from_numpy(scales), codes


def stochastic_quantize(
    x: torch.Tensor, scales: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``s + round_random(s * x / scale)`` of each row (``s = levels``, each row's
    ``scale >= max|x|``, up to rounding), in ``0 .. 2 s``: each value goes to one of its
    two nearest levels, the upper one with probability equal to its distance from the
    lower, so the estimate ``scale * (code - s) / s`` (:func:`dequantize`) is unbiased.
    Returns ``scales`` (as given) and the codes (int32, offset by ``s`` as they are sent).

    In fixed point, with one 16-bit random draw ``u`` per coordinate
    (:data:`RANDOM_BITS`): ``t = round(y 2^16)`` for ``y = s * x / scale`` (computed in
    float32), and the code is ``(s 2^16 + t + u) >> 16``, that is ``s + floor(t / 2^16)``
    plus one exactly when ``u >= 2^16 - (t mod 2^16)``: with probability ``(t mod
    2^16) / 2^16``. So the code's mean is ``s + t / 2^16`` exactly (resolution
    argument: ``u`` takes each of its ``2^16`` values equally often), and ``t / 2^16`` is
    within ``2^-17`` of a step of the float32 ``y``, itself within ``2^-23`` of ``y``'s
    size of the exact value (two float32 roundings). A float32 uniform per coordinate
    compared with ``y``'s fractional part would be exact to ``2^-24`` of a step, well
    below either error, and cost far more: ``torch.rand`` took 1.05 ms for the 2NN's
    199,210 coordinates where :func:`random_bits` takes 0.01 ms, and the rounding is
    then four integer operations with no float compare.
    Codes never exceed ``2 s``: where rounding puts the largest magnitude a hair above
    the top level, the row is clipped to it.
    """
    values = np.ascontiguousarray(x.detach().numpy())
    given = np.ascontiguousarray(scales.detach().numpy())
    return scales, _round(values, given, False, levels, randomness)


def _round(
    values: np.ndarray, scales: np.ndarray, from_largest: bool, levels: int, randomness: Randomness
) -> torch.Tensor:
    """The codes of :func:`stochastic_quantize` (int32), with each row's scale its
    largest magnitude, written into ``scales``, where ``from_largest``."""
    if isinstance(randomness, torch.Generator):
        randomness = random_bits(draw_seed(randomness), values.size).reshape(values.shape)
    codes = np.empty(values.shape, np.int32)
    bits = _MAGNITUDE_BITS[values.dtype.itemsize]
    _round_codes(values, bits, scales, from_largest, levels << RANDOM_BITS, randomness, codes)
    return torch.from_numpy(codes)


_MAGNITUDE_BITS = {
    4: np.array([2**31 - 1, 0x7F800000], np.uint32),
    8: np.array([2**63 - 1, 0x7FF0000000000000], np.uint64),
}
"""By a float's width in bytes: the mask that clears its sign bit, and infinity's bits.
A magnitude's bits order as the magnitude does, and a NaN's lie above infinity's."""


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _round_codes(values, magnitude_bits, scales, from_largest, top, randomness, codes):
    """The codes of :func:`stochastic_quantize`, row by row: the row's largest magnitude
    (NaN if a value is), which is its scale where ``from_largest``; then one pass, ``y
    = value * (top / scale)`` in float32 (or ``value / scale * top`` where ``top /
    scale`` overflows float32), clipped to ``+-top`` where the largest magnitude's
    ``y`` rounded a hair above it (products round monotonically, so no other can),
    ``t = rint(y)``, and ``code = (t + top + u) >> 16`` in uint32. numpy took seven
    passes and three temporaries the size of the update (0.47 ms a row of the 2NN's
    rotated update; this takes about 0.05), and a dozen small operations on the
    scales (0.02 ms a call, as much as the pass for 50,000 coordinates). Each row's
    codes depend on that row alone."""
    top32 = np.float32(top)
    offset = np.uint64(top)
    word = np.uint64(0xFFFFFFFF)  # numba widens integer sums: wrap them at 32 bits by hand
    shift = np.uint64(RANDOM_BITS)
    for r in range(values.shape[0]):
        largest = _largest_magnitude(values[r], magnitude_bits)
        if from_largest:
            scales[r] = largest
        scale = np.float32(scales[r])
        safe = scale if scale > 0 else np.float32(1)
        wide = np.float64(top) / np.float64(safe)
        divide = not wide < np.finfo(np.float32).max  # top / scale overflows: divide first
        f = safe if divide else np.float32(wide)
        peak = np.float32(largest) / f * top32 if divide else np.float32(largest) * f
        clip = peak > top32
        for i in range(values.shape[1]):
            x = np.float32(values[r, i])
            y = x / f * top32 if divide else x * f
            if clip:
                y = min(max(y, -top32), top32)
            t = np.uint64(np.uint32(np.int32(np.rint(y))))
            codes[r, i] = np.int32(((t + offset + np.uint64(randomness[r, i])) & word) >> shift)


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _largest_magnitude(row, magnitude_bits):
    """``row``'s largest magnitude, NaN if a value is NaN (``magnitude_bits`` as in
    :data:`_MAGNITUDE_BITS` for its type), found as an integer maximum of the bits with
    the sign cleared, which vectorizes where a float maximum with its NaN rules did not
    (0.028 ms for 50,000 coordinates, this 0.004; written as an indexed loop and a
    conditional, as the array's iterator and ``max`` took 0.014)."""
    keys = row.view(magnitude_bits.dtype)
    sign_mask = magnitude_bits[0]
    top = magnitude_bits.dtype.type(0)
    for i in range(keys.size):
        key = keys[i] & sign_mask
        top = key if key > top else top
    if top > magnitude_bits[1]:
        return row.dtype.type(np.nan)
    cell = np.empty(1, magnitude_bits.dtype)
    cell[0] = top
    return cell.view(row.dtype)[0]


def dequantize(
    scales: torch.Tensor, codes: torch.Tensor, levels: int, offset: int = 0
) -> torch.Tensor:
    """The estimate ``scale * (code / s)`` of each row of signed codes ``code`` in ``-s ..
    s`` (:func:`nearest_quantize`'s, or :func:`stochastic_quantize`'s as sent, with
    ``offset = s``: each is ``code + offset``), in the scales' precision.

    One compiled pass (torch's subtraction, conversion, division and product took
    0.02 ms for a row of 10,000 codes, as much as the rest of decoding it); bit for bit
    the same IEEE operations in the same order."""
    values = np.empty(codes.shape, scales.numpy().dtype)
    _dequantize(np.ascontiguousarray(codes.numpy()), offset, levels, scales.numpy(), values)
    return torch.from_numpy(values)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _dequantize(codes, offset, levels, scales, values):
    """``values[r, i] = scales[r] * ((codes[r, i] - offset) / levels)``."""
    s = values.dtype.type(levels)
    for r in range(codes.shape[0]):
        scale = scales[r]
        for i in range(codes.shape[1]):
            values[r, i] = scale * (values.dtype.type(codes[r, i] - offset) / s)


def qsgd_variance_bound(dim: int, levels: int) -> float:
    """Alistarh et al. 2017, Lemma 3.1: ``E||Q(v) - v||^2 <= this * ||v||^2``."""
    return min(dim / levels**2, math.sqrt(dim) / levels)


def nearest_quantize(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round each row of ``x`` to the nearest of ``2 s + 1`` levels over ``[-max|x|,
    max|x|]``: biased, for use with error feedback, which carries the rounding to the
    next round (Karimireddy et al. 2019). Returns the scales ``[n]`` and the codes
    (int64); :func:`dequantize` inverts. A row with NaN gets the scale NaN (and
    meaningless codes), which decoding refuses."""
    values = np.ascontiguousarray(x.detach().numpy())
    scales = np.empty(len(values), values.dtype)
    codes = np.empty(values.shape, np.int64)
    _nearest_codes(values, _MAGNITUDE_BITS[values.dtype.itemsize], levels, scales, codes)
    return torch.from_numpy(scales), torch.from_numpy(codes)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _nearest_codes(values, magnitude_bits, levels, scales, codes):
    """:func:`nearest_quantize` row by row: ``scale = max|v|`` (NaN if any value is), and
    ``code = rint(v / scale * s)`` in the values' precision (``scale`` 1 where it is 0
    or NaN), two passes a row where numpy took seven."""
    s = values.dtype.type(levels)
    for r in range(values.shape[0]):
        largest = _largest_magnitude(values[r], magnitude_bits)
        scales[r] = largest
        safe = largest if largest > 0 else values.dtype.type(1)
        for i in range(values.shape[1]):
            codes[r, i] = np.int64(np.rint(values[r, i] / safe * s))


# --- Sparsification ---------------------------------------------------------------------


def densify(indices: torch.Tensor, values: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows of ``dim`` zeros holding ``values`` at ``indices`` (both ``[n, k]``)."""
    return values.new_zeros(values.shape[0], dim).scatter_(1, indices, values)


def corrected_rows(
    updates: torch.Tensor, residuals: Sequence[torch.Tensor | None]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each row of ``updates`` plus its client's residual (``update + e``, Karimireddy et
    al. 2019, Algorithm 2; a copy where there is none yet), and the rows stacked.

    Each row is a tensor of its own, which the caller turns into the next residual in
    place (:func:`sparse_error_feedback`): one large allocation per client, where a
    fresh residual besides cost more than the sum, and a checkpoint then holds one row
    per client, not the stack. A single row is stacked as a view of itself.
    """
    rows = [
        row + residual if residual is not None else row.clone()
        for row, residual in zip(updates, residuals, strict=True)
    ]
    return rows, rows[0][None] if len(rows) == 1 else torch.stack(rows)


def error_feedback(corrected: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """The new residual ``corrected - sent`` (Karimireddy et al. 2019, Algorithm 2), where
    ``corrected = update + old residual`` and ``sent`` is what the server will decode.

    For top-k, and for values rounded to float16, the subtraction is exact in float32
    (the two are equal, zero, or within a factor of two: Sterbenz's lemma), so
    ``sent + residual == update + old residual`` holds to the bit.
    """
    return corrected - sent


def sparse_error_feedback(
    corrected: torch.Tensor, indices: torch.Tensor, sent: torch.Tensor
) -> torch.Tensor:
    """:func:`error_feedback` of one row that sent ``sent`` at ``indices`` (all 1-D),
    computed in place: ``corrected`` (which the caller owns) gets ``corrected - sent``
    at ``indices`` and is returned as the residual. Bit for bit the dense subtraction
    (elsewhere that subtracts zero, which changes no float), in one compiled pass over
    the indices instead of two over the row and a new one (and in a fifth of the time
    of torch's ``index_put_``)."""
    arrays = (tensor.detach().numpy() for tensor in (corrected, indices, sent))
    _subtract_at(*arrays)
    return corrected


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _subtract_at(out, indices, sent):
    """``out[indices[j]] -= sent[j]`` for each ``j``."""
    for j in range(indices.size):
        out[indices[j]] -= sent[j]
