"""Built-in client samplers: a fixed-size uniform cohort, Poisson sampling, everyone.

Uniform sampling without replacement is the cohort of McMahan et al. 2017 ("a random
fraction C of clients"). Poisson sampling (each client joins independently with
probability q) is what privacy amplification by sampling assumes in DP-FedAvg
(McMahan et al. 2018).

Every sampler here simulates client availability (its ``availability`` option, the
``--availability`` flag): each round each client is online independently with that
probability, drawn first from the round's generator (so a seed repeats it), and the
sampler chooses only among the online clients. A uniform cohort is then smaller than
``clients_per_round`` when fewer clients are online; the round's record lists the
clients it got. At availability 1 nothing is drawn for it, and every sampler draws
exactly what it drew before the option existed.

For privacy accounting availability earns no amplification: a real device's
availability is no secret coin of the server's. Poisson sampling is still accounted
at ``sample_rate`` (each online client joins with that probability, whoever is online)
and "all" as no sampling; a uniform cohort among the online clients is a uniform
cohort among fewer clients, which no scheme here describes, so client-level DP
refuses it (use Poisson sampling). The expected clients per round, which client-level
DP divides by, do count availability.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from privfl.components import ClientSampler, Sampling
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


def online_clients(
    num_clients: int, availability: float, generator: torch.Generator
) -> torch.Tensor:
    """Return the sorted ids of the clients online this round.

    Each client is online independently with probability ``availability``: one
    vectorized draw of ``num_clients`` uniforms from ``generator``, or none at all when
    ``availability`` is 1 (everyone is online).
    """
    if availability == 1:
        return torch.arange(num_clients)
    draws = torch.rand(num_clients, generator=generator, dtype=torch.float64)
    return torch.nonzero(draws < availability).reshape(-1)


def expected_cohort(num_clients: int, clients_per_round: int, availability: float) -> float:
    """Return ``E[min(clients_per_round, O)]`` where ``O ~ Binomial(num_clients, availability)``.

    That is the mean size of a uniform cohort chosen among the online clients:
    ``clients_per_round`` less the expected shortfall, summed over the
    ``clients_per_round`` smallest values of ``O``.
    """
    if availability == 1:
        return float(clients_per_round)
    online = torch.distributions.Binomial(
        num_clients, probs=torch.tensor(availability, dtype=torch.float64)
    )
    counts = torch.arange(clients_per_round, dtype=torch.float64)
    shortfall = ((clients_per_round - counts) * online.log_prob(counts).exp()).sum()
    return float(clients_per_round - shortfall)


class UniformSampler(ClientSampler):
    """``clients_per_round`` distinct clients, uniformly at random among the online ones.

    When fewer clients than that are online, the round has all the online ones.

    :param clients_per_round: How many clients each round has (at most the clients).
    :param availability: The probability that a client is online in a round, in
        (0, 1]; the sampler chooses among the online clients only.
    """

    name = "uniform"
    flags = MappingProxyType(
        {"clients_per_round": "--clients-per-round", "availability": "--availability"}
    )

    def __init__(self, clients_per_round: int = 10, availability: float = 1.0) -> None:
        if not (isinstance(clients_per_round, int) and clients_per_round >= 1):
            raise ConfigError("clients_per_round", clients_per_round, "an integer >= 1")
        self.clients_per_round = clients_per_round
        self.availability = _probability("availability", availability)

    def expected_clients(self, num_clients: int) -> float:
        if self.clients_per_round > num_clients:
            raise ConfigError(
                "clients_per_round",
                self.clients_per_round,
                f"at most the number of clients ({num_clients})",
            )
        return expected_cohort(num_clients, self.clients_per_round, self.availability)

    def sampling(self, num_clients: int) -> Sampling | None:
        if self.availability < 1:
            return None  # a uniform cohort among a varying set of online clients
        return Sampling("fixed", num_clients, size=self.clients_per_round)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        online = online_clients(num_clients, self.availability, generator)
        picks = torch.randperm(len(online), generator=generator)[: self.clients_per_round]
        return online[picks].sort().values


class PoissonSampler(ClientSampler):
    """Each online client independently with probability ``sample_rate``; the size varies.

    :param sample_rate: The probability that a client joins a round, in (0, 1].
    :param availability: The probability that a client is online in a round, in
        (0, 1]; the sampler chooses among the online clients only.
    """

    name = "poisson"
    flags = MappingProxyType({"sample_rate": "--sample-rate", "availability": "--availability"})

    def __init__(self, sample_rate: float = 0.1, availability: float = 1.0) -> None:
        self.sample_rate = _probability("sample_rate", sample_rate)
        self.availability = _probability("availability", availability)

    def expected_clients(self, num_clients: int) -> float:
        return self.sample_rate * self.availability * num_clients

    def sampling(self, num_clients: int) -> Sampling:
        return Sampling("poisson", num_clients, rate=self.sample_rate)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        online = online_clients(num_clients, self.availability, generator)
        draws = torch.rand(len(online), generator=generator, dtype=torch.float64)
        return online[draws < self.sample_rate]


class AllSampler(ClientSampler):
    """Every online client, every round.

    :param availability: The probability that a client is online in a round, in
        (0, 1]; the sampler chooses among the online clients only.
    """

    name = "all"
    flags = MappingProxyType({"availability": "--availability"})

    def __init__(self, availability: float = 1.0) -> None:
        self.availability = _probability("availability", availability)

    def expected_clients(self, num_clients: int) -> float:
        return self.availability * num_clients

    def sampling(self, num_clients: int) -> Sampling:
        return Sampling("all", num_clients)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        return online_clients(num_clients, self.availability, generator)


def _probability(key: str, value: float) -> float:
    """Return ``value`` as a float if it is a number in (0, 1], else raise ConfigError."""
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= 1
    ):
        raise ConfigError(key, value, "a number in (0, 1]")
    return float(value)


@hookimpl
def privfl_register_samplers() -> list[type]:
    return [UniformSampler, PoissonSampler, AllSampler]
