"""Built-in aggregators: thin classes around the rules in :mod:`privfl.aggregation`."""

from __future__ import annotations

import torch

from privfl.aggregation import fedavg
from privfl.components import Aggregator
from privfl.plugins import hookimpl


class FedAvg(Aggregator):
    """Mean of the updates weighted by example counts (McMahan et al. 2017).

    Needs only the weighted sum of updates and the sum of weights, so it can run
    behind secure aggregation.
    """

    name = "fedavg"
    works_on_secure_sum = True

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return fedavg(updates, weights)


@hookimpl
def privfl_register_aggregators() -> list[type]:
    return [FedAvg]
