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

Every sampler here can also simulate a per-round deadline (``deadline``, the
``--deadline`` flag): each chosen client takes a simulated time to answer
(:func:`response_times`), and those past the deadline are stragglers, which the
server half treats as dropped clients (they get no task; secure aggregation counts
them as dropped in its first phase) and lists in the round's record. Stragglers are
data-independent, so, as with availability, privacy accounting is unchanged (an upper
bound), while the expected clients per round count only those on time.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch

from privfl.components import ClientSampler, Sampling
from privfl.errors import ConfigError
from privfl.options import positive_number
from privfl.plugins import hookimpl
from privfl.seeding import torch_generator


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


def response_times(
    client_ids: torch.Tensor, *, num_clients: int, spread: float, seed: int, round: int
) -> torch.Tensor:
    """Return simulated response times of ``client_ids`` in ``round``, in multiples of the median.

    A log-normal model: ``log T[i, r] = spread * (D[i] + J[i, r]) / sqrt(2)`` with
    ``D[i]`` and ``J[i, r]`` standard normal. ``D`` is the client's device, drawn once
    per seed for all ``num_clients`` (the same clients are slow in every round), and
    ``J`` the round's jitter. ``T`` then has median 1 and log-standard deviation
    ``spread``, half of whose variance persists across rounds. The times do not depend
    on how much data a client holds: the server half, which draws them, never knows.
    """
    devices = torch.randn(num_clients, generator=torch_generator(seed, "devices"))
    jitter = torch.randn(len(client_ids), generator=torch_generator(seed, "latency", round))
    return torch.exp(spread * (devices[client_ids] + jitter) / math.sqrt(2))


def on_time_probability(deadline: float | None, spread: float) -> float:
    """Return ``P(T <= deadline)`` for the response times of :func:`response_times`."""
    if deadline is None:
        return 1.0
    return 0.5 * (1 + math.erf(math.log(deadline) / (spread * math.sqrt(2))))


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


class _Participation(ClientSampler):
    """Availability and the deadline, shared by the built-in samplers.

    :param availability: The probability that a client is online in a round, in
        (0, 1]; the sampler chooses among the online clients only.
    :param deadline: Simulated per-round deadline in multiples of the median client's
        response time (> 0); clients slower than that are stragglers, dropped from the
        round. Unset: no deadline.
    :param device_spread: Log-standard deviation of the simulated response times (> 0);
        used only with a deadline.
    """

    flags = MappingProxyType(
        {
            "availability": "--availability",
            "deadline": "--deadline",
            "device_spread": "--device-spread",
        }
    )

    def __init__(
        self, availability: float = 1.0, deadline: float | None = None, device_spread: float = 0.5
    ) -> None:
        self.availability = _probability("availability", availability)
        self.deadline = None if deadline is None else positive_number("deadline", deadline)
        self.device_spread = positive_number("device_spread", device_spread)

    def on_time(self) -> float:
        """The probability that a chosen client answers before the deadline."""
        return on_time_probability(self.deadline, self.device_spread)

    def stragglers(
        self, client_ids: torch.Tensor, *, num_clients: int, seed: int, round: int
    ) -> torch.Tensor:
        if self.deadline is None or len(client_ids) == 0:
            return client_ids[:0]
        times = response_times(
            client_ids, num_clients=num_clients, spread=self.device_spread, seed=seed, round=round
        )
        return client_ids[times > self.deadline]


class UniformSampler(_Participation):
    """``clients_per_round`` distinct clients, uniformly at random among the online ones.

    When fewer clients than that are online, the round has all the online ones.

    :param clients_per_round: How many clients each round has (at most the clients).
    """

    name = "uniform"
    flags = MappingProxyType({"clients_per_round": "--clients-per-round", **_Participation.flags})

    def __init__(
        self,
        clients_per_round: int = 10,
        availability: float = 1.0,
        deadline: float | None = None,
        device_spread: float = 0.5,
    ) -> None:
        if not (isinstance(clients_per_round, int) and clients_per_round >= 1):
            raise ConfigError("clients_per_round", clients_per_round, "an integer >= 1")
        self.clients_per_round = clients_per_round
        super().__init__(availability, deadline, device_spread)

    def expected_clients(self, num_clients: int) -> float:
        if self.clients_per_round > num_clients:
            raise ConfigError(
                "clients_per_round",
                self.clients_per_round,
                f"at most the number of clients ({num_clients})",
            )
        cohort = expected_cohort(num_clients, self.clients_per_round, self.availability)
        return cohort * self.on_time()

    def sampling(self, num_clients: int) -> Sampling | None:
        if self.availability < 1:
            return None  # a uniform cohort among a varying set of online clients
        return Sampling("fixed", num_clients, size=self.clients_per_round)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        online = online_clients(num_clients, self.availability, generator)
        picks = torch.randperm(len(online), generator=generator)[: self.clients_per_round]
        return online[picks].sort().values


class PoissonSampler(_Participation):
    """Each online client independently with probability ``sample_rate``; the size varies.

    :param sample_rate: The probability that a client joins a round, in (0, 1].
    """

    name = "poisson"
    flags = MappingProxyType({"sample_rate": "--sample-rate", **_Participation.flags})

    def __init__(
        self,
        sample_rate: float = 0.1,
        availability: float = 1.0,
        deadline: float | None = None,
        device_spread: float = 0.5,
    ) -> None:
        self.sample_rate = _probability("sample_rate", sample_rate)
        super().__init__(availability, deadline, device_spread)

    def expected_clients(self, num_clients: int) -> float:
        return self.sample_rate * self.availability * self.on_time() * num_clients

    def sampling(self, num_clients: int) -> Sampling:
        return Sampling("poisson", num_clients, rate=self.sample_rate)

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        online = online_clients(num_clients, self.availability, generator)
        draws = torch.rand(len(online), generator=generator, dtype=torch.float64)
        return online[draws < self.sample_rate]


class AllSampler(_Participation):
    """Every online client, every round."""

    name = "all"

    def expected_clients(self, num_clients: int) -> float:
        return self.availability * self.on_time() * num_clients

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
