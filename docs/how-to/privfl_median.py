"""privfl_median: a privfl plugin that adds a coordinate-wise median aggregator.

The example of docs/how-to/write-a-plugin.md. The median of each coordinate over the
round's clients (Yin et al. 2018) ignores a minority of wild updates, unlike FedAvg.
"""

# [start-plugin]
from __future__ import annotations

import torch

import privfl


class CoordinateMedian(privfl.Aggregator):
    """Coordinate-wise lower median of the updates (Yin et al. 2018); ignores the weights.

    :param min_clients: Fewest accepted updates a round needs; fewer is an error.
    """

    name = "lower-median"
    # The median needs every update on its own: it cannot run on a secure sum.
    works_on_secure_sum = False

    def __init__(self, min_clients: int = 1) -> None:
        if not (isinstance(min_clients, int) and min_clients >= 1):
            raise privfl.ConfigError("min_clients", min_clients, "an integer >= 1")
        self.min_clients = min_clients

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if len(updates) < self.min_clients:
            raise ValueError(f"median needs {self.min_clients} updates, got {len(updates)}")
        return updates.median(dim=0).values


@privfl.hookimpl
def privfl_register_aggregators() -> list[type]:
    return [CoordinateMedian]


# [end-plugin]


# [start-stop]
PATIENCE = 3
"""Evaluated rounds without a better accuracy after which training stops."""


@privfl.hookimpl
def privfl_should_stop(federation: privfl.Federation, record: privfl.RoundRecord) -> str | None:
    accuracy = record.metrics.get("accuracy")
    if accuracy is None:  # not an evaluation round
        return None
    # Plugin state lives in the federation, under the plugin's own key.
    state = federation.stash.setdefault("privfl_median.early_stop", {"best": -1.0, "stale": 0})
    if accuracy > state["best"]:
        state["best"], state["stale"] = accuracy, 0
        return None
    state["stale"] += 1
    if state["stale"] >= PATIENCE:
        return f"no better accuracy than {state['best']:.4f} for {PATIENCE} evaluated rounds"
    return None


# [end-stop]
