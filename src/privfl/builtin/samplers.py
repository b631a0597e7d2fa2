"""Built-in client samplers: a fixed-size uniform cohort, Poisson sampling, everyone.

Uniform sampling without replacement is the cohort of McMahan et al. 2017 ("a random
fraction C of clients"). Poisson sampling (each client joins independently with
probability q) is what privacy amplification by sampling assumes in DP-FedAvg
(McMahan et al. 2018).
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from privfl.components import ClientSampler, Sampling
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


class UniformSampler(ClientSampler):
    """Exactly ``clients_per_round`` distinct clients, uniformly at random.

    :param clients_per_round: How many clients each round has (at most the clients).
    """

    name = "uniform"
    flags = MappingProxyType({"clients_per_round": "--clients-per-round"})

    def __init__(self, clients_per_round: int = 10) -> None:
        if not (isinstance(clients_per_round, int) and clients_per_round >= 1):
            raise ConfigError("clients_per_round", clients_per_round, "an integer >= 1")
        self.clients_per_round = clients_per_round

    def expected_clients(self, num_clients: int) -> float:
        if self.clients_per_round > num_clients:
            raise ConfigError(
                "clients_per_round",
                self.clients_per_round,
                f"at most the number of clients ({num_clients})",
            )
        return float(self.clients_per_round)

    def sampling(self, num_clients: int) -> Sampling:
        return Sampling("fixed", num_clients, size=self.clients_per_round)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        chosen = torch.randperm(num_clients, generator=generator)[: self.clients_per_round]
        return chosen.sort().values


class PoissonSampler(ClientSampler):
    """Each client independently with probability ``sample_rate``; the cohort size varies.

    :param sample_rate: The probability that a client joins a round, in (0, 1].
    """

    name = "poisson"
    flags = MappingProxyType({"sample_rate": "--sample-rate"})

    def __init__(self, sample_rate: float = 0.1) -> None:
        if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
            raise ConfigError("sample_rate", sample_rate, "a number in (0, 1]")
        self.sample_rate = float(sample_rate)

    def expected_clients(self, num_clients: int) -> float:
        return self.sample_rate * num_clients

    def sampling(self, num_clients: int) -> Sampling:
        return Sampling("poisson", num_clients, rate=self.sample_rate)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        draws = torch.rand(num_clients, generator=generator, dtype=torch.float64)
        return torch.nonzero(draws < self.sample_rate).reshape(-1)


class AllSampler(ClientSampler):
    """Every client, every round."""

    name = "all"

    def expected_clients(self, num_clients: int) -> float:
        return float(num_clients)

    def sampling(self, num_clients: int) -> Sampling:
        return Sampling("all", num_clients)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(num_clients)


@hookimpl
def privfl_register_samplers() -> list[type]:
    return [UniformSampler, PoissonSampler, AllSampler]
