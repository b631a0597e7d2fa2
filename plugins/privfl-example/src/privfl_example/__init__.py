"""An example privfl plugin: the ``unweighted-mean`` aggregator.

Plain FedAvg weights each update by the client's example count; this rule gives each
client one vote, which is a common choice when example counts are private or when
clients that hold much data should not dominate.
"""

from __future__ import annotations

import torch

import privfl


class UnweightedMean(privfl.Aggregator):
    """The plain mean of the updates, ignoring example counts."""

    name = "unweighted-mean"
    works_on_secure_sum = True  # a weighted mean with weight 1: sums are enough
    weighting = "unit"  # one vote per client, also when clients weight their own sums

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return updates.mean(dim=0)


@privfl.hookimpl
def privfl_register_aggregators() -> list[type]:
    return [UnweightedMean]
