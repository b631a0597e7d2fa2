"""The ``low-rank`` compressor: Konečný et al. 2016's low-rank structured updates.

Konečný, McMahan, Yu, Richtárik, Suresh, Bacon 2016, "Federated Learning: Strategies
for Improving Communication Efficiency" (arXiv:1610.05492), Section 3: each client's
update of a ``d1 x d2`` weight matrix is ``H = A B``, with ``A`` (``d1 x k``) drawn
from a seed and only ``B`` (``k x d2``) and the seed sent. The math is in
:mod:`privfl.algorithms.low_rank`.

**How this differs from the paper.** There, the client *trains* ``B`` directly, with
``A`` fixed, so local training itself never leaves the subspace. privfl's clients
train the full model (any trainer, any mechanism), so here the trained update is
*projected* onto the subspace afterwards: ``B = Q^T H`` with ``Q`` the orthonormal
basis of ``A``'s columns, and the server rebuilds ``H' = c Q B``. The client sends
the sketch ``A^T H`` (the size of ``B``) and the server, which draws the same ``A``,
works out ``Q`` and ``B`` (:func:`~privfl.algorithms.low_rank.coefficients`), so the
client does no QR decomposition. With ``unbiased``
(the default) ``c = d1 / k``, an unbiased estimate of ``H`` whose squared error is
``(d1 / k - 1) ||H||^2`` in expectation; without it ``c = 1``, the orthogonal
projection, which is never longer than ``H`` (up to float32 rounding, as clipping
itself) but keeps only a share ``k / d1`` of it on average. Both have rank at most
``k``.

**Choosing the rank.** The unbiased estimate's error grows as ``d1 / k``. On real
MNIST (``bench/compression.py``'s workload: 100 IID clients, 10 a round) rank 0.1
sent 10x fewer bytes for 0.2 to 0.9 points of accuracy (2NN, 50 rounds, the bench's
seed and three others) and 0.1 to 0.3 (CNN, 20 rounds), but at rank 0.02 (2NN) and
0.05 (CNN) training diverged; the plain projection is stable but learns more slowly
(rank 0.25 cost the 2NN 2.9 to 3.1 points), since it keeps only ``k / d1`` of an
update on average.

**Which matrices.** Every parameter of two or more dimensions is a matrix of
``d1 = shape[0]`` rows (a ``Linear``'s ``[out, in]``; a ``Conv2d``'s ``[out, in, kh,
kw]`` as ``[out, in * kh * kw]``); ``k`` is ``rank`` itself or, below 1, that share of
``d1`` (:func:`~privfl.algorithms.low_rank.subspace_rank`). Biases, other vectors, and
matrices whose ``k`` would be ``d1`` travel in full, in float32. The compressor needs
the model's parameter shapes, which :class:`~privfl.Federation` passes to
:meth:`~privfl.Compressor.setup`.

**One subspace per client and round.** Each client draws its own seed from its
compressor randomness (derived from the run's seed, the round and the client), as in
the paper's ``A_t^i``, and sends it. The clients' errors are then independent, so the
error of their average shrinks with their number; with one subspace shared by the
round's clients, no part of the average outside it would reach the server that round.

**Composition.** With secure aggregation it is refused: each client's coefficients are
in its own basis, so they do not add up (with a shared basis they would, but their
float values do not sum in secure aggregation's integer ring; ``shared-grid`` is the
compressor that does). With client-level DP whose noise is added after the client
half, only ``unbiased = false`` with float32 values keeps the clip norm
(:attr:`~privfl.Compressor.keeps_norm_bound`).

Byte format (little-endian): uint64 seed of the subspaces, then each weight matrix's
``k x d2`` sketch ``A^T H`` in the model's order (float32, or float16 with
``value_bits = 16``), then the values of every parameter that travels in full
(float32). No other header: the server knows the ranks from the options and shapes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from privfl.algorithms.compression import draw_seed
from privfl.algorithms.low_rank import (
    coefficients,
    random_gaussian,
    reconstruct,
    sketch,
    subspace_rank,
    unbiased_scale,
)
from privfl.builtin.compressors import VALUE_DTYPES, _check_value_bits, _values
from privfl.compressors import StackedCompressor
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


@dataclass(frozen=True)
class ProjectedMatrix:
    """A weight matrix sent as the coefficients of its projection: where it lies in the
    flat update (from ``start``, ``rows x cols`` row by row) and the subspace's
    dimension ``k``."""

    start: int
    rows: int
    cols: int
    k: int

    @property
    def end(self) -> int:
        """One past its last coordinate in the flat update."""
        return self.start + self.rows * self.cols


class LowRank(StackedCompressor):
    """Konečný et al. 2016's low-rank structured updates, applied to the trained update:
    each weight matrix's update projected onto a seeded random subspace of its columns,
    sent as the projection's coefficients and the seed.

    :param rank: The subspace's dimension ``k`` for each weight matrix: a whole number
        of 1 or more (at most the matrix's rows), or below 1 a share of the matrix's
        rows (rounded, at least 1).
    :param unbiased: Scale the reconstruction by ``rows / k``, which makes it an unbiased
        estimate of the update (but can raise its norm); false sends the orthogonal
        projection itself, never longer than the update.
    :param value_bits: 32 sends the coefficients as float32, 16 as float16 (biases and
        other parameters sent in full stay float32).
    """

    name = "low-rank"
    flags = MappingProxyType({"rank": "--compress-rank"})

    def __init__(self, rank: float = 0.1, unbiased: bool = True, value_bits: int = 32) -> None:
        if (
            isinstance(rank, bool)
            or not isinstance(rank, int | float)
            or not (math.isfinite(rank) and rank > 0)
            or (rank >= 1 and rank != int(rank))
        ):
            raise ConfigError(
                "rank", rank, "a share in (0, 1) of each matrix's rows, or a whole number >= 1"
            )
        _check_value_bits(value_bits)
        self.rank = rank
        self.unbiased = unbiased
        self.value_dtype = VALUE_DTYPES[value_bits]
        self.matrices: tuple[ProjectedMatrix, ...] = ()
        """The weight matrices sent as coefficients, set by :meth:`setup`."""
        self.full = torch.empty(0, dtype=torch.int64)
        """The coordinates sent in full (biases, vectors), set by :meth:`setup`."""

    def setup(self, *, dimension: int, seed: int, shapes: Sequence[Sequence[int]] = ()) -> None:
        """Server half: lay out the update's weight matrices from the model's ``shapes``.

        :raises ConfigError: without ``shapes``, or when they do not add up to
            ``dimension``.
        """
        super().setup(dimension=dimension, seed=seed, shapes=shapes)
        sizes = [math.prod(shape) for shape in self.shapes]
        if not self.shapes or sum(sizes) != dimension:
            raise ConfigError(
                "compressor",
                self.name,
                f"the model's parameter shapes in setup(shapes=...), adding up to the update's "
                f"{dimension} coordinates (got {list(self.shapes)})",
            )
        matrices, full, start = [], [], 0
        for shape, size in zip(self.shapes, sizes, strict=True):
            rows = shape[0] if len(shape) >= 2 else size
            k = subspace_rank(rows, self.rank)
            if len(shape) >= 2 and k < rows:
                matrices.append(ProjectedMatrix(start, rows, size // rows, k))
            else:
                full.append(torch.arange(start, start + size))
            start += size
        self.matrices = tuple(matrices)
        self.full = torch.cat(full) if full else torch.empty(0, dtype=torch.int64)

    @property
    def keeps_norm_bound(self) -> bool:
        return not self.unbiased and self.value_dtype == torch.float32

    @property
    def encoded_size(self) -> int:
        """The bytes of every client's message: seed, coefficients, full values."""
        width = torch.finfo(self.value_dtype).bits // 8
        return 8 + width * sum(m.k * m.cols for m in self.matrices) + 4 * len(self.full)

    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        seeds = [draw_seed(g) for g in generators]
        # Client by client and matrix by matrix: each client has its own subspaces, so
        # there is no product to share, and a model has few weight matrices.
        encoded = []
        for seed, row in zip(seeds, updates, strict=True):
            parts = [struct.pack("<Q", seed)]
            for matrix, gaussian in zip(self.matrices, self._gaussians(seed), strict=True):
                update = row[matrix.start : matrix.end].reshape(matrix.rows, matrix.cols)
                parts.append(_bytes(sketch(update, gaussian).to(self.value_dtype)))
            parts.append(_bytes(row[self.full]))
            encoded.append(b"".join(parts))
        return encoded

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        if len(data) != self.encoded_size:
            raise ValueError(f"{len(data)} bytes, not the {self.encoded_size} of low-rank")
        (seed,) = struct.unpack_from("<Q", data)
        width, offset = torch.finfo(self.value_dtype).bits // 8, 8
        update = torch.empty(self.dimension, dtype=torch.float32)
        for matrix, gaussian in zip(self.matrices, self._gaussians(seed), strict=True):
            count = matrix.k * matrix.cols
            sketched = _values(data[offset : offset + count * width], self.value_dtype)
            offset += count * width
            basis, kept = coefficients(sketched.view(matrix.k, matrix.cols), gaussian)
            scale = unbiased_scale(matrix.rows, matrix.k) if self.unbiased else 1.0
            rebuilt = reconstruct(kept, basis, scale)
            update[matrix.start : matrix.end] = rebuilt.reshape(-1)
        if len(self.full):
            update[self.full] = _values(data[offset:], torch.float32)
        return update

    def _gaussians(self, seed: int) -> list[torch.Tensor]:
        """Each weight matrix's Gaussian ``A``, drawn in order from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        return [random_gaussian(m.rows, m.k, generator, torch.float32) for m in self.matrices]


def _bytes(values: torch.Tensor) -> bytes:
    return values.contiguous().numpy().tobytes()


@hookimpl
def privfl_register_compressors() -> list[type]:
    return [LowRank]
