"""Low-rank structured updates as pure math: projection onto a seeded random subspace.

Konečný, McMahan, Yu, Richtárik, Suresh, Bacon 2016, "Federated Learning: Strategies
for Improving Communication Efficiency" (arXiv:1610.05492), Section 3, *structured
updates, low rank*: a client's update of a ``d1 x d2`` weight matrix is restricted to
``H = A B``, where ``A`` (``d1 x k``) is drawn at random from a seed and ``B``
(``k x d2``) is all the client sends, with the seed.

Here ``A`` is replaced by ``Q``, the orthonormal basis of its column space (QR of
``A``, ``A = Q R``), and ``B = Q^T H`` holds the coefficients of ``H``'s orthogonal
projection onto that space. The client computes only the sketch ``C = A^T H``
(:func:`sketch`), the same size as ``B``; the server, which draws the same ``A``,
orthonormalizes it and solves ``R^T B = C`` (:func:`coefficients`), since ``A^T H =
R^T Q^T H``. So the client does no QR decomposition (two per client of the 2NN, 0.17
of its 0.58 ms of encoding), and the server one triangular solve of ``k x k`` more than
the decomposition it does anyway.

The columns of a Gaussian matrix span a uniformly random ``k``-dimensional subspace,
so ``P = Q Q^T`` is the projection onto a uniformly random subspace and
``E[P] = (k / d1) I`` (by symmetry: ``E[P]`` commutes with every rotation, so it is a
multiple of ``I``, and its trace is ``k``). Hence:

- the plain reconstruction ``Q B = P H`` is the closest matrix to ``H`` whose columns
  lie in the subspace, and never longer than ``H`` (``||P H|| <= ||H||``);
- the scaled reconstruction ``(d1 / k) Q B`` is unbiased, ``E[(d1 / k) P H] = H``, with
  ``E||(d1 / k) P H - H||^2 = (d1 / k - 1) ||H||^2`` (see :func:`unbiased_error`).

Nothing here keeps state or knows about rounds; :mod:`privfl.builtin.low_rank` adapts
these functions to the client and server halves.
"""

from __future__ import annotations

import torch


def subspace_rank(rows: int, rank: float) -> int:
    """The dimension ``k`` of the subspace for a matrix of ``rows`` rows: ``rank`` itself
    when it is 1 or more (at most ``rows``), else that share of ``rows`` (at least 1)."""
    k = int(rank) if rank >= 1 else round(rank * rows)
    return max(1, min(rows, k))


def random_gaussian(
    rows: int, k: int, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Konečný et al.'s random ``A``: a ``rows x k`` standard Gaussian matrix from
    ``generator``, whose columns span a uniformly random ``k``-dimensional subspace."""
    return torch.randn(rows, k, generator=generator, dtype=dtype)


def sketch(update: torch.Tensor, gaussian: torch.Tensor) -> torch.Tensor:
    """``C = A^T H``: the ``k x d2`` sketch of ``H`` (``d1 x d2``) that a client sends
    for ``gaussian`` (``A``, ``d1 x k``)."""
    return gaussian.mT @ update


def coefficients(
    sketched: torch.Tensor, gaussian: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q`` and ``B = Q^T H`` from the sketch ``C = A^T H``: the orthonormal basis of
    ``A``'s columns by a reduced QR decomposition ``A = Q R``, and ``B`` solving ``R^T
    B = C``. Only the span matters to ``Q Q^T``, and a Gaussian matrix's span is
    uniformly distributed, so no sign correction of ``R``'s diagonal is needed (``R``
    is invertible with probability one)."""
    basis, triangle = torch.linalg.qr(gaussian)
    return basis, torch.linalg.solve_triangular(triangle.mT, sketched, upper=False)


def reconstruct(coefficients: torch.Tensor, basis: torch.Tensor, scale: float) -> torch.Tensor:
    """``H' = c Q B``: the ``d1 x d2`` matrix that coefficients ``B`` stand for, times
    ``scale`` (``c``: 1 for the projection itself, :func:`unbiased_scale` for an
    unbiased estimate)."""
    return (basis @ coefficients).mul_(scale)


def unbiased_scale(rows: int, k: int) -> float:
    """``c = d1 / k``, which makes ``c Q Q^T H`` an unbiased estimate of ``H``, since
    ``E[Q Q^T] = (k / d1) I`` over uniformly random ``k``-dimensional subspaces."""
    return rows / k


def unbiased_error(rows: int, k: int) -> float:
    """``E||(d1 / k) Q Q^T H - H||^2 / ||H||^2 = d1 / k - 1``.

    Expanding the square: ``c^2 E||P H||^2 - 2 c E<P H, H> + ||H||^2``, and
    ``E||P H||^2 = E<P H, H> = (k / d1) ||H||^2`` (``P`` is a symmetric idempotent),
    so with ``c = d1 / k`` it is ``(d1 / k - 2 + 1) ||H||^2``.
    """
    return rows / k - 1
