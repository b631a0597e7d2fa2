"""Server optimizers as pure functions: old parameters and state in, new ones out.

Sign convention: the aggregated ``update`` points from the global parameters to the
clients' local ones (``local - global``), so the pseudo-gradient is ``-update`` and
plain FedAvg is ``params + update``. Reddi et al.'s ``Delta_t`` is our ``update``; Hsu
et al.'s ``Delta w`` is ``-update``.

Nothing here mutates its arguments; the classes in
:mod:`privfl.builtin.server_optimizers` keep the state between rounds.
"""

from __future__ import annotations

import torch


def fedavgm_step(
    params: torch.Tensor,
    update: torch.Tensor,
    velocity: torch.Tensor,
    *,
    server_lr: float,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FedAvgM step (Hsu et al. 2019, Section 3), heavy-ball momentum on the server.

    "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification" (arXiv:1909.06335): ``v <- beta v + Delta w``, ``w <- w - v``, with
    ``Delta w = -update``; here with a server learning rate, as in ``torch.optim.SGD``:
    ``v' = momentum * v + update`` and ``params' = params + server_lr * v'`` (``v``
    starts at zero; momentum 0 and server_lr 1 is FedAvg).

    :returns: ``(params', v')``.
    """
    velocity = momentum * velocity + update
    return params + server_lr * velocity, velocity


def initial_second_moment(params: torch.Tensor, tau: float) -> torch.Tensor:
    """Return ``v_{-1} = tau^2`` everywhere (Reddi et al. 2021, Algorithm 2 asks >= tau^2)."""
    return torch.full_like(params, tau * tau)


def _adaptive_step(
    params: torch.Tensor,
    first: torch.Tensor,
    second: torch.Tensor,
    *,
    server_lr: float,
    tau: float,
) -> torch.Tensor:
    return params + server_lr * first / (second.sqrt() + tau)


def fedadam_step(
    params: torch.Tensor,
    update: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FedAdam step (Reddi et al. 2021, Algorithm 2).

    "Adaptive Federated Optimization" (ICLR 2021), without bias correction:
    ``m' = beta1 m + (1 - beta1) update``, ``v' = beta2 v + (1 - beta2) update^2``,
    ``params' = params + server_lr * m' / (sqrt(v') + tau)``; ``m`` starts at 0 and ``v``
    at :func:`~privfl.algorithms.server_optimization.initial_second_moment`.

    :returns: ``(params', m', v')``.
    """
    m = beta1 * m + (1 - beta1) * update
    v = beta2 * v + (1 - beta2) * update.square()
    return _adaptive_step(params, m, v, server_lr=server_lr, tau=tau), m, v


def fedyogi_step(
    params: torch.Tensor,
    update: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FedYogi step (Reddi et al. 2021, Algorithm 2).

    "Adaptive Federated Optimization" (ICLR 2021): as
    :func:`~privfl.algorithms.server_optimization.fedadam_step` but with Yogi's additive second
    moment, ``v' = v - (1 - beta2) update^2 sign(v - update^2)``.

    :returns: ``(params', m', v')``.
    """
    m = beta1 * m + (1 - beta1) * update
    squared = update.square()
    v = v - (1 - beta2) * squared * torch.sign(v - squared)
    return _adaptive_step(params, m, v, server_lr=server_lr, tau=tau), m, v


def fedadagrad_step(
    params: torch.Tensor,
    update: torch.Tensor,
    v: torch.Tensor,
    *,
    server_lr: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FedAdagrad step (Reddi et al. 2021, Algorithm 2, with ``beta1 = 0``).

    "Adaptive Federated Optimization" (ICLR 2021): ``v' = v + update^2``,
    ``params' = params + server_lr * update / (sqrt(v') + tau)``: Algorithm 2 with
    ``beta1 = 0`` (no server momentum, so ``m_t = Delta_t``) and ``v`` starting at
    :func:`~privfl.algorithms.server_optimization.initial_second_moment`.

    :returns: ``(params', v')``.
    """
    v = v + update.square()
    return _adaptive_step(params, update, v, server_lr=server_lr, tau=tau), v
