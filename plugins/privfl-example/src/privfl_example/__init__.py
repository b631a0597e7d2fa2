"""An example privfl plugin: an aggregator and a privacy mechanism with its own options.

- ``unweighted-mean``: plain FedAvg weights each update by the client's example count;
  this rule gives each client one vote, a common choice when example counts are private
  or when clients that hold much data should not dominate.
- ``update-norm-bound``: each client scales its own update down to an L2 norm of at
  most ``max_norm``, where the client runs, so no single client can move the model far
  (the bound client-level DP and robust aggregation build on). It declares its option
  in its constructor and a flag for it, ``--max-update-norm``; a run configures it in a
  ``[update-norm-bound]`` table.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

import privfl


class UnweightedMean(privfl.Aggregator):
    """The plain mean of the updates, ignoring example counts."""

    name = "unweighted-mean"
    works_on_secure_sum = True  # a weighted mean with weight 1: sums are enough
    weighting = "unit"  # one vote per client, also when clients weight their own sums

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return updates.mean(dim=0)


# [start-mechanism]
class UpdateNormBound(privfl.PrivacyMechanism):
    """Each client scales its update to an L2 norm of at most ``max_norm``.

    :param max_norm: The largest L2 norm a client's update may have.
    """

    name = "update-norm-bound"
    flags = MappingProxyType({"max_norm": "--max-update-norm"})

    def __init__(self, max_norm: float = 10.0) -> None:
        if not (math.isfinite(max_norm) and max_norm > 0):
            raise privfl.ConfigError("max_norm", max_norm, "a finite number > 0")
        self.max_norm = float(max_norm)

    def client_step(self, update, *, config, generator, statistics):
        norm = float(update.norm())
        return update * (self.max_norm / norm) if norm > self.max_norm else update


# [end-mechanism]


@privfl.hookimpl
def privfl_register_aggregators() -> list[type]:
    return [UnweightedMean]


@privfl.hookimpl
def privfl_register_mechanisms() -> list[type]:
    return [UpdateNormBound]
