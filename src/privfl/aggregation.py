"""Aggregation rules as pure functions over stacked updates.

Each rule takes the round's updates stacked as a ``[n_clients, dim]`` tensor and
returns one ``[dim]`` update, with vector operations only. The registered aggregator
classes in :mod:`privfl.builtin.aggregators` are thin adapters around these.
"""

from __future__ import annotations

import torch


def fedavg(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the updates (FedAvg, McMahan et al. 2017, Algorithm 1).

    "Communication-Efficient Learning of Deep Networks from Decentralized Data"
    weights each client's update by its number of examples ``n_k / n``.

    :param updates: ``[n_clients, dim]`` updates.
    :param weights: ``[n_clients]`` non-negative weights, not all zero.
    """
    if updates.ndim != 2 or weights.shape != updates.shape[:1]:
        raise ValueError(
            f"expected updates [n, dim] and weights [n], got {tuple(updates.shape)} "
            f"and {tuple(weights.shape)}"
        )
    total = weights.sum()
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {float(total)}")
    return (weights.to(updates.dtype) / total.to(updates.dtype)) @ updates
