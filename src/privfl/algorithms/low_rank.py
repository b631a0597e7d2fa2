"""Low-rank structured updates as pure math: projection onto a seeded random subspace.

Konečný, McMahan, Yu, Richtárik, Suresh, Bacon 2016, "Federated Learning: Strategies
for Improving Communication Efficiency" (arXiv:1610.05492), Section 3, *structured
updates, low rank*: a client's update of a ``d1 x d2`` weight matrix is restricted to
``H = A B``, where ``A`` (``d1 x k``) is drawn at random from a seed and ``B``
(``k x d2``) is all the client sends, with the seed.

Here ``A`` is replaced by ``Q``, the orthonormal basis of its column space (QR of
``A``), and ``B = Q^T H`` holds the coefficients of ``H``'s orthogonal projection onto
that space. The columns of a Gaussian matrix span a uniformly random ``k``-dimensional
subspace, so ``P = Q Q^T`` is the projection onto a uniformly random subspace and
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


def random_basis(rows: int, k: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """``Q``: ``rows x k`` orthonormal columns spanning a uniformly random subspace.

    A Gaussian ``rows x k`` matrix from ``generator`` (Konečný et al.'s random ``A``),
    orthonormalized by a reduced QR decomposition. Only the span matters to ``Q Q^T``,
    and a Gaussian matrix's span is uniformly distributed, so no sign correction of
    ``R``'s diagonal is needed.
    """
    gaussian = torch.randn(rows, k, generator=generator, dtype=dtype)
    return torch.linalg.qr(gaussian).Q


def project(update: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``B = Q^T H``: the ``k x d2`` coefficients of ``H``'s (``d1 x d2``) projection
    onto the span of ``basis`` (``Q``, ``d1 x k``)."""
    return basis.mT @ update


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
