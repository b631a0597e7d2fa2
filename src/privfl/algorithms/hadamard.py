"""The randomized Hadamard rotation that few-bit quantizers apply first, as pure math.

Suresh, Yu, Kumar, McMahan 2017, "Distributed Mean Estimation with Limited
Communication" (ICML); also Konečný et al. 2016: multiplying by random signs and then
by the orthonormal Walsh-Hadamard matrix spreads a vector's mass over all coordinates,
so few-bit quantization loses less; the rotation is orthogonal and its own inverse up
to the signs. Used by :mod:`privfl.algorithms.compression`'s quantizers (through
:mod:`privfl.builtin.compressors`), by ``shared-grid`` and by downlink compression.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numba
import numpy as np
import torch

MIN_BLOCK = 64
"""The smallest Hadamard block: vectors are padded to a multiple of it (see
:func:`hadamard_blocks`)."""


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
    """The orthonormal Walsh-Hadamard transform of each row of ``x`` (``[n, 2**k]``),
    float32 or float64, by the fast transform (``m log2 m`` additions, compiled by
    numba). The transform is its own inverse.
    """
    m = x.shape[1]
    if m & (m - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, not {m}")
    return _block_hadamard(x, [m])


def _block_hadamard(
    x: torch.Tensor, blocks: Sequence[int], signs: torch.Tensor | None = None
) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of each block of each row of ``x``
    (float32 or float64; blocks are powers of two), row by row, so that a client's
    rotated update does not depend on the clients stacked beside it. Each row is first
    multiplied by ``signs`` where given, and padded with zeros to ``sum(blocks)``, as
    the transform reads it (no padded copy is made).

    The fast transform (``m log2 m`` additions a block, :func:`_transform_rows`),
    compiled by numba: torch has no Hadamard transform on CPU, and the best that
    matrix products of Kronecker factors did was 0.39 ms a row of the 2NN's 199,210
    coordinates with 16- and 32-wide factors (2.1 GFLOP a second counted as the
    additions of the fast transform), and only with its BLAS on one thread:
    numpy's threaded BLAS, called beside torch's training, made the 2NN's round 1.6
    times as long.
    """
    values = np.ascontiguousarray(x.detach().numpy())
    out = np.empty((len(values), sum(blocks)), values.dtype)
    flips = (
        np.empty(0, values.dtype)
        if signs is None
        else signs.numpy().astype(values.dtype, copy=False)
    )
    _transform_rows(values, flips, out, np.asarray(blocks, dtype=np.uint64))
    return torch.from_numpy(out)


_GROUP = 16
"""The fast transform's first four levels act within groups of this many coordinates."""


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _transform_rows(values, signs, out, blocks):
    """``out[r] =`` the orthonormal Walsh-Hadamard transform of each block of
    ``values[r]`` times ``signs`` (none where empty) and padded with zeros (blocks as
    uint64 sizes, powers of two, in order along the row)."""
    for r in range(values.shape[0]):
        start = np.uint64(0)
        for size in blocks:
            _transform_block(values[r], signs, out[r], start, size)
            start += size


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _transform_block(row, signs, out, start, size):
    """``out[start : start + size] =`` the orthonormal fast Walsh-Hadamard transform of
    ``row[start : start + size]`` times ``signs`` there (none where empty), zero past
    the row's end.

    The fast transform of a block of ``m`` is ``log2 m`` levels of butterflies ``(u,
    v) -> (u + v, u - v)`` between coordinates ``h`` apart, ``h = 1, 2, ..., m/2``.
    Levels below 16 run within each group of 16, one group at a time. From 16 up,
    three levels at a time (:func:`_eight_point`) read one buffer and write the other,
    so a block of ``m`` is read ``log2(m) / 3`` times instead of ``log2 m``. Both
    buffers are made here and every index is unsigned: LLVM then knows they overlap
    nothing and that no index wraps, and runs the butterflies 16 at a time (in place,
    in one buffer, they did not vectorize). One level at a time this took 0.34 ms a row
    of the 2NN's 199,232 padded coordinates on one thread; three at a time, 0.245.
    ``1 / sqrt(m)`` is applied as the block is first read.
    """
    work = np.empty(size, row.dtype)
    spare = np.empty(size, row.dtype)
    scale = row.dtype.type(1.0 / np.sqrt(np.float64(size)))
    one = row.dtype.type(1)
    end = np.uint64(row.size)
    group = min(size, np.uint64(_GROUP))  # a tiny block is one group of its own size
    inside = min(size, end - start if end > start else np.uint64(0))
    whole = inside - inside % group if group == np.uint64(_GROUP) else np.uint64(0)
    if signs.size:  # groups within the row: reads in constant steps, no test inside
        for g in range(np.uint64(0), whole, group):
            for k in range(np.uint64(_GROUP)):
                work[g + k] = row[start + g + k] * signs[start + g + k] * scale
            _group_levels(work, g)
    else:
        for g in range(np.uint64(0), whole, group):
            for k in range(np.uint64(_GROUP)):
                work[g + k] = row[start + g + k] * scale
            _group_levels(work, g)
    for g in range(whole, size, group):  # the zero padding at the row's end, a tiny block
        for k in range(group):
            flip = signs[start + g + k] if signs.size else one
            work[g + k] = _read(row, start + g + k, end) * flip * scale
        if group == np.uint64(_GROUP):
            _group_levels(work, g)
    if group < np.uint64(_GROUP):  # its levels below 16 run as those from 16 up
        group = np.uint64(1)
    h = group
    forward = True  # the next levels read work and write spare
    while h < size:
        eight = h * np.uint64(8) <= size
        if forward and eight:
            _eight_point(work, spare, size, h)
        elif forward:
            _two_point(work, spare, size, h)
        elif eight:
            _eight_point(spare, work, size, h)
        else:
            _two_point(spare, work, size, h)
        h *= np.uint64(8) if eight else np.uint64(2)
        forward = not forward
    done = work if forward else spare
    for k in range(size):
        out[start + k] = done[k]


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _eight_point(src, dst, size, h):
    """Levels ``h``, ``2 h`` and ``4 h`` of the fast transform from ``src`` into ``dst``:
    each eight coordinates ``h`` apart go through their three levels of butterflies in
    registers (an 8-point Walsh-Hadamard transform). Indices are sums of unsigned ``h``
    multiples (a product with a Python integer would make numba compute it in float)."""
    h2 = h + h
    h3 = h2 + h
    h4 = h2 + h2
    for i in range(np.uint64(0), size, h4 + h4):
        for k in range(i, i + h):
            x0, x1, x2, x3 = src[k], src[k + h], src[k + h2], src[k + h3]
            x4, x5, x6, x7 = src[k + h4], src[k + h4 + h], src[k + h4 + h2], src[k + h4 + h3]
            a0, a1, a2, a3 = x0 + x1, x0 - x1, x2 + x3, x2 - x3
            a4, a5, a6, a7 = x4 + x5, x4 - x5, x6 + x7, x6 - x7
            b0, b1, b2, b3 = a0 + a2, a1 + a3, a0 - a2, a1 - a3
            b4, b5, b6, b7 = a4 + a6, a5 + a7, a4 - a6, a5 - a7
            dst[k], dst[k + h4] = b0 + b4, b0 - b4
            dst[k + h], dst[k + h4 + h] = b1 + b5, b1 - b5
            dst[k + h2], dst[k + h4 + h2] = b2 + b6, b2 - b6
            dst[k + h3], dst[k + h4 + h3] = b3 + b7, b3 - b7


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _two_point(src, dst, size, h):
    """Level ``h`` of the fast transform from ``src`` into ``dst``."""
    for i in range(np.uint64(0), size, h + h):
        for k in range(i, i + h):
            u = src[k]
            v = src[k + h]
            dst[k] = u + v
            dst[k + h] = u - v


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _group_levels(work, g):
    """The first four levels of the fast transform on ``work[g : g + 16]``, in place
    (the constant 16 lets LLVM unroll them)."""
    h = np.uint64(1)
    while h < np.uint64(_GROUP):
        for i in range(g, g + np.uint64(_GROUP), h + h):
            for k in range(i, i + h):
                u = work[k]
                v = work[k + h]
                work[k] = u + v
                work[k + h] = u - v
        h += h


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _read(row, i, end):
    """``row[i]``, or zero at or past ``end`` (the padding)."""
    return row[min(i, end - np.uint64(1))] if i < end else row.dtype.type(0)


def random_signs(dim: int, seed: int) -> torch.Tensor:
    """The diagonal of Suresh et al.'s random sign matrix ``D`` for the padded length of
    ``dim`` coordinates (see :func:`hadamard_blocks`), as float32 ``+-1``: one bit of
    numpy's PCG64 stream from ``seed`` per coordinate, the same on every platform.

    The signs of a shorter length are a prefix of a longer one's, so a round's rotation
    is drawn once per seed however many clients, coders of kept values (of lengths that
    differ client by client) or decodings use it: the stream is cached for the
    :data:`SIGN_STREAMS` latest seeds, at the longest length asked so far plus an
    eighth. Do not modify the tensor (it is a view of the cached stream).
    """
    padded = _block_array(dim)[1]
    with _STREAMS_LOCK:
        stream = _STREAMS.pop(seed, None)
        if stream is None or len(stream) < padded:
            stream = _draw_signs(seed, padded + padded // 8)
        _STREAMS[seed] = stream  # the latest seed last
        while len(_STREAMS) > SIGN_STREAMS:
            del _STREAMS[next(iter(_STREAMS))]
    return stream[:padded]


@functools.lru_cache(maxsize=64)
def _block_array(dim: int) -> tuple[np.ndarray, int]:
    """:func:`hadamard_blocks` of ``dim`` as a uint64 array, as the compiled transform
    takes them (read-only: it is shared), and the padded length, their sum; kept for
    the latest 64 lengths, since every client's encoding asks."""
    blocks = np.asarray(hadamard_blocks(dim), dtype=np.uint64)
    blocks.flags.writeable = False
    return blocks, int(blocks.sum())


SIGN_STREAMS = 4
"""Seeds whose sign streams :func:`random_signs` keeps (a round's rotation, its
downlink's, and the previous round's)."""
_STREAMS: dict[int, torch.Tensor] = {}
_STREAMS_LOCK = threading.Lock()


def _draw_signs(seed: int, count: int) -> torch.Tensor:
    """The first ``count`` signs of ``seed``'s stream (see :func:`random_signs`)."""
    words = np.random.PCG64(seed).random_raw(-(-count // 64)).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), count=count, bitorder="little")
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1)


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H D x`` for each row of ``x`` (``[n, dim]``): flip signs, pad, transform blocks.

    :raises ValueError: for fewer ``signs`` than the padded length (:func:`random_signs`
        of ``dim`` gives that many).
    """
    blocks = hadamard_blocks(x.shape[1])
    if len(signs) < sum(blocks):
        raise ValueError(f"{len(signs)} signs for a rotation of {sum(blocks)} coordinates")
    return _block_hadamard(x, blocks, signs)


def unrotate(y: torch.Tensor, signs: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: ``D H y``, cut back to ``dim`` coordinates."""
    back = _block_hadamard(y, hadamard_blocks(dim))[:, :dim]
    return back.mul_(signs[:dim])
