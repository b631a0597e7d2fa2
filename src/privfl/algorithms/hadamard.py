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
import math
from collections.abc import Sequence

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
    """The orthonormal Walsh-Hadamard transform of each row of ``x`` (``[n, 2**k]``).

    ``H_m`` is the Kronecker product of small Hadamard matrices (``H_64 (x) H_64 (x)
    ...``), so the transform is one small matrix product per factor along its axis of
    the row reshaped into a grid: ``O(n m log m)`` work done by BLAS, a row at a time.
    torch has no Hadamard transform on CPU, hence this one. The transform is its own
    inverse.
    """
    m = x.shape[1]
    if m & (m - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, not {m}")
    return _block_hadamard(x, [m])


_HADAMARD_FACTOR = 64


def _block_hadamard(x: torch.Tensor, blocks: Sequence[int]) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of each block of each row of ``x``
    (``[n, sum(blocks)]``; powers of two, largest first, all at least
    :data:`MIN_BLOCK` where there are several).

    With ``f`` the smallest block (at most 64), every block's ``H_m = H_(m/f) (x) H_f``:
    one product by ``H_f`` over the whole row, cut into rows of ``f``, does the last
    factor of every block at once; then each block's remaining factors act on the
    leading axes of the block reshaped into a grid, the first with ``1 / sqrt(m)``
    folded into its matrix. The small matrices are cached. Rows are transformed one at
    a time: a matrix product's rounding can depend on how many rows it multiplies, and
    a client's rotated update must not depend on the clients stacked beside it.
    """
    last = min(blocks[-1], _HADAMARD_FACTOR)
    inner = _hadamard_matrix(last, x.dtype, 1.0)
    out = torch.empty_like(x)
    pieces = list(blocks)
    for row, into in zip(x.split(1), out, strict=True):
        # H is symmetric: the product by H_f on the right is H_f on each chunk of f.
        chunks = (row.reshape(-1, last) @ inner).reshape(-1)
        parts = zip(chunks.split(pieces), into.split(pieces), pieces, strict=True)
        for part, target, size in parts:
            _leading_factors(part, size // last, size, target)
    return out


def _leading_factors(part: torch.Tensor, rest: int, size: int, out: torch.Tensor) -> None:
    """``out = (H_rest (x) I) part / sqrt(size)`` for a block ``part`` of ``size`` values."""
    scale = 1 / math.sqrt(size)
    if rest == 1:
        torch.mul(part, scale, out=out)
        return
    after = size // rest
    y = part
    while rest > 1:
        factor = min(rest, _HADAMARD_FACTOR)
        rest //= factor
        # the part as [before, factor, rest * after]: H_factor acts on the middle axis
        matrix = _hadamard_matrix(factor, part.dtype, scale)
        grid = y.reshape(-1, factor, rest * after)
        y = torch.matmul(matrix, grid, out=out.view(grid.shape)) if rest == 1 else matrix @ grid
        scale = 1.0


@functools.lru_cache(maxsize=64)
def _hadamard_matrix(size: int, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Sylvester's ``size x size`` Hadamard matrix of +-1, times ``scale`` (cached: do
    not modify)."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h * scale


def random_signs(dim: int, generator: torch.Generator) -> torch.Tensor:
    """The diagonal of Suresh et al.'s random sign matrix ``D`` for the padded length of
    ``dim`` coordinates (see :func:`hadamard_blocks`), as float32 ``+-1``."""
    padded = sum(hadamard_blocks(dim))
    return torch.randint(0, 2, (padded,), generator=generator).mul_(2).sub_(1).float()


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
