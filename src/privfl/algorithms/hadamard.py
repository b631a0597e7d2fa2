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


def _block_hadamard(x: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of each block of each row of ``x``
    (``[n, sum(blocks)]``, float32 or float64; blocks are powers of two), row by row, so
    that a client's rotated update does not depend on the clients stacked beside it.

    The fast transform (``m log2 m`` additions a block, :func:`_transform_rows`),
    compiled by numba: torch has no Hadamard transform on CPU, and the best that
    matrix products of Kronecker factors did was 0.39 ms a row of the 2NN's 199,210
    coordinates with 16- and 32-wide factors (2.1 GFLOP a second counted as the
    additions of the fast transform), and only with its BLAS on one thread:
    numpy's threaded BLAS, called beside torch's training, made the 2NN's round 1.6
    times as long.
    """
    values = np.ascontiguousarray(x.detach().numpy())
    out = np.empty_like(values)
    _transform_rows(values, out, np.asarray(blocks, dtype=np.uint64))
    return torch.from_numpy(out)


_GROUP = 16
"""The fast transform's first four levels act within groups of this many coordinates."""


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _transform_rows(values, out, blocks):
    """``out[r] =`` the orthonormal Walsh-Hadamard transform of each block of
    ``values[r]`` (blocks as uint64 sizes, powers of two, in order along the row)."""
    for r in range(values.shape[0]):
        start = np.uint64(0)
        for size in blocks:
            _transform_block(values[r], out[r], start, size)
            start += size


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _transform_block(row, out, start, size):
    """``out[start : start + size] =`` the orthonormal fast Walsh-Hadamard transform of
    ``row[start : start + size]``.

    The fast transform of a block of ``m`` is ``log2 m`` levels of butterflies ``(u,
    v) -> (u + v, u - v)`` between coordinates ``h`` apart, ``h = 1, 2, ..., m/2``.
    Levels below 16 run within each group of 16, one group at a time; each level from
    16 up reads one buffer and writes the other. Both buffers are made here and every
    index is unsigned: LLVM then knows they overlap nothing and that no index wraps,
    and runs the butterflies 16 at a time: 0.34 ms a row of the 2NN's 199,232 padded
    coordinates on one thread (in place, in one buffer, they did not vectorize).
    ``1 / sqrt(m)`` is applied as the block is first read.
    """
    work = np.empty(size, row.dtype)
    spare = np.empty(size, row.dtype)
    scale = row.dtype.type(1.0 / np.sqrt(np.float64(size)))
    if size < _GROUP:  # a tiny block: the levels below, as those from 16 up
        for k in range(size):
            work[k] = row[start + k] * scale
        group = np.uint64(1)
    else:
        group = np.uint64(_GROUP)
        for g in range(np.uint64(0), size, np.uint64(_GROUP)):
            _group_levels(row, work, start + g, g, scale)
    h = group
    forward = True  # the level reads work and writes spare
    # Both directions spelled out: through one helper taking the buffers as arguments
    # (no longer known to be apart), the levels took 12% longer.
    while h < size:
        if forward:
            for i in range(np.uint64(0), size, h + h):
                for k in range(i, i + h):
                    u = work[k]
                    v = work[k + h]
                    spare[k] = u + v
                    spare[k + h] = u - v
        else:
            for i in range(np.uint64(0), size, h + h):
                for k in range(i, i + h):
                    u = spare[k]
                    v = spare[k + h]
                    work[k] = u + v
                    work[k + h] = u - v
        forward = not forward
        h += h
    done = work if forward else spare
    for k in range(size):
        out[start + k] = done[k]


@numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
def _group_levels(row, work, at, g, scale):
    """``work[g : g + 16] =`` the first four levels of the group ``row[at : at + 16]``
    times ``scale`` (the constant 16 lets LLVM unroll them)."""
    for k in range(np.uint64(_GROUP)):
        work[g + k] = row[at + k] * scale
    h = np.uint64(1)
    while h < np.uint64(_GROUP):
        for i in range(g, g + np.uint64(_GROUP), h + h):
            for k in range(i, i + h):
                u = work[k]
                v = work[k + h]
                work[k] = u + v
                work[k + h] = u - v
        h += h


@functools.lru_cache(maxsize=32)
def random_signs(dim: int, seed: int) -> torch.Tensor:
    """The diagonal of Suresh et al.'s random sign matrix ``D`` for the padded length of
    ``dim`` coordinates (see :func:`hadamard_blocks`), as float32 ``+-1``: one bit of
    numpy's PCG64 stream from ``seed`` per coordinate, the same on every platform.

    Cached (do not modify the tensor): a round's rotation is drawn once however many
    clients, coders of kept values, or decodings use it; 32 entries cover a round's
    lengths where each client keeps a different number of values.
    """
    padded = sum(hadamard_blocks(dim))
    words = np.random.PCG64(seed).random_raw(-(-padded // 64)).astype("<u8")
    bits = np.unpackbits(words.view(np.uint8), count=padded, bitorder="little")
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1)


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H D x`` for each row of ``x`` (``[n, dim]``): pad, flip signs, transform blocks."""
    n, dim = x.shape
    blocks = hadamard_blocks(dim)
    padded = x.new_empty(n, sum(blocks))
    torch.mul(x, signs[:dim], out=padded[:, :dim])
    padded[:, dim:] = 0
    return _block_hadamard(padded, blocks)


def unrotate(y: torch.Tensor, signs: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: ``D H y``, cut back to ``dim`` coordinates."""
    back = _block_hadamard(y, hadamard_blocks(dim))[:, :dim]
    return back.mul_(signs[:dim])
