"""Built-in partitioners: IID (optionally quantity-skewed), McMahan shards, Dirichlet label skew.

Thin classes around the seeded functions in :mod:`privfl.data.partition`.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import torch

from privfl.components import Partitioner
from privfl.data import partition
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


class IIDPartitioner(Partitioner):
    """A uniformly random split into near-equal parts, or parts of log-normal sizes.

    :param quantity_skew: Sigma of the log-normal client sizes (Acar et al. 2021); 0
        gives equal sizes, 0.3 mildly and 1 to 2 strongly unequal ones; every client
        keeps at least one example.
    """

    name = "iid"
    flags = MappingProxyType({"quantity_skew": "--quantity-skew"})

    def __init__(self, quantity_skew: float = 0.0) -> None:
        if not (
            isinstance(quantity_skew, (int, float))
            and np.isfinite(quantity_skew)
            and quantity_skew >= 0
        ):
            raise ConfigError("quantity_skew", quantity_skew, "a finite number >= 0")
        self.quantity_skew = float(quantity_skew)

    def split(self, targets: torch.Tensor, num_clients: int, *, seed: int) -> list[np.ndarray]:
        return partition.iid(len(targets), num_clients, seed=seed, quantity_skew=self.quantity_skew)


class ShardsPartitioner(Partitioner):
    """Sort by label, cut into shards, deal ``shards_per_client`` shards to each client.

    :param shards_per_client: Shards (runs of one or two labels) each client gets.
    """

    name = "shards"

    def __init__(self, shards_per_client: int = 2) -> None:
        if not (isinstance(shards_per_client, int) and shards_per_client >= 1):
            raise ConfigError("shards_per_client", shards_per_client, "an integer >= 1")
        self.shards_per_client = shards_per_client

    def split(self, targets: torch.Tensor, num_clients: int, *, seed: int) -> list[np.ndarray]:
        return partition.shards(
            targets.numpy(), num_clients, shards_per_client=self.shards_per_client, seed=seed
        )


class DirichletPartitioner(Partitioner):
    """Per-class shares drawn from Dirichlet(``alpha``): small alpha, strong label skew.

    Client sizes follow from the draw (they vary more as alpha shrinks); clients the
    draw leaves empty get an example taken at random from the others, so any number
    of clients up to the examples works.

    :param alpha: The Dirichlet concentration, > 0.
    """

    name = "dirichlet"
    flags = MappingProxyType({"alpha": "--alpha"})

    def __init__(self, alpha: float = 0.5) -> None:
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
            raise ConfigError("alpha", alpha, "a finite number > 0")
        self.alpha = float(alpha)

    def split(self, targets: torch.Tensor, num_clients: int, *, seed: int) -> list[np.ndarray]:
        return partition.dirichlet(targets.numpy(), num_clients, alpha=self.alpha, seed=seed)


@hookimpl
def privfl_register_partitioners() -> list[type]:
    return [IIDPartitioner, ShardsPartitioner, DirichletPartitioner]
