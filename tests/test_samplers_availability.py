"""Seeded client availability in the built-in samplers: who is online, who is chosen."""

from __future__ import annotations

import math

import pytest
import torch

import privfl
from privfl.builtin.samplers import (
    AllSampler,
    PoissonSampler,
    UniformSampler,
    expected_cohort,
    online_clients,
)
from privfl.components import Sampling
from privfl.seeding import torch_generator
from privfl.testing import tiny_federation


def round_generator(round: int, seed: int = 0) -> torch.Generator:
    """The generator the round protocol hands the sampler in ``round``."""
    return torch_generator(seed, "sample", round)


def test_online_fraction_is_close_to_availability_over_many_rounds() -> None:
    rounds, clients = 400, 10_000
    online = [len(online_clients(clients, 0.3, round_generator(r))) for r in range(rounds)]
    # Binomial(10,000, 0.3) a round: the mean of 400 rounds has sd 0.0002.
    assert sum(online) / (rounds * clients) == pytest.approx(0.3, abs=0.002)
    assert len(set(online)) > 20  # the count varies from round to round


def test_each_client_is_online_at_its_rate() -> None:
    seen = torch.zeros(50)
    for r in range(2000):
        seen[online_clients(50, 0.7, round_generator(r))] += 1
    # each client: Binomial(2000, 0.7), sd of the fraction 0.01
    assert torch.all((seen / 2000 - 0.7).abs() < 0.05)


def test_online_draw_is_reproducible_per_round() -> None:
    first = online_clients(1000, 0.5, round_generator(3))
    assert torch.equal(first, online_clients(1000, 0.5, round_generator(3)))
    assert not torch.equal(first, online_clients(1000, 0.5, round_generator(4)))
    assert not torch.equal(first, online_clients(1000, 0.5, round_generator(3, seed=1)))


@pytest.mark.parametrize(
    "sampler", [UniformSampler(clients_per_round=100, availability=0.5), PoissonSampler(0.2, 0.5)]
)
def test_samplers_choose_only_online_clients(sampler) -> None:
    for r in range(20):
        cohort = sampler.sample(num_clients=10_000, generator=round_generator(r))
        online = online_clients(10_000, 0.5, round_generator(r))  # the sampler's first draw
        assert set(cohort.tolist()) <= set(online.tolist())
        assert cohort.tolist() == sorted(set(cohort.tolist()))
        assert torch.equal(cohort, sampler.sample(num_clients=10_000, generator=round_generator(r)))


def test_uniform_takes_every_online_client_when_too_few_are_online() -> None:
    sampler = UniformSampler(clients_per_round=15, availability=0.3)
    sizes = []
    for r in range(200):
        cohort = sampler.sample(num_clients=20, generator=round_generator(r))
        online = online_clients(20, 0.3, round_generator(r))
        if len(online) < 15:
            assert torch.equal(cohort, online)
        else:
            assert len(cohort) == 15
        sizes.append(len(cohort))
    assert sum(sizes) / len(sizes) == pytest.approx(6, abs=0.5)  # Binomial(20, 0.3)
    assert sampler.expected_clients(20) == pytest.approx(6, abs=1e-4)


def test_uniform_cohort_is_full_when_enough_are_online() -> None:
    sampler = UniformSampler(clients_per_round=100, availability=0.5)
    for r in range(20):
        assert len(sampler.sample(num_clients=10_000, generator=round_generator(r))) == 100


def test_expected_cohort_matches_the_simulated_mean() -> None:
    sampler = UniformSampler(clients_per_round=100, availability=0.5)
    sizes = [
        len(sampler.sample(num_clients=200, generator=round_generator(r))) for r in range(4000)
    ]
    # about half the rounds have fewer than 100 of the 200 clients online
    assert sum(sizes) / len(sizes) == pytest.approx(expected_cohort(200, 100, 0.5), abs=0.2)
    assert expected_cohort(200, 100, 0.5) < 98
    assert expected_cohort(200, 100, 1.0) == 100


def test_poisson_rate_combines_with_availability() -> None:
    sampler = PoissonSampler(sample_rate=0.1, availability=0.4)
    sizes = [
        len(sampler.sample(num_clients=5000, generator=round_generator(r))) for r in range(300)
    ]
    # Binomial(5000, 0.04) a round: the mean of 300 has sd 0.8
    assert sum(sizes) / len(sizes) == pytest.approx(200, abs=4)
    assert sampler.expected_clients(5000) == pytest.approx(200)


def test_all_sampler_takes_the_online_clients() -> None:
    sampler = AllSampler(availability=0.25)
    cohort = sampler.sample(num_clients=1000, generator=round_generator(1))
    assert torch.equal(cohort, online_clients(1000, 0.25, round_generator(1)))
    assert sampler.expected_clients(1000) == 250


@pytest.mark.parametrize(
    ("new", "before"),
    [
        (UniformSampler(7), lambda g: torch.randperm(50, generator=g)[:7].sort().values),
        (
            PoissonSampler(0.2),
            lambda g: torch.nonzero(torch.rand(50, generator=g, dtype=torch.float64) < 0.2).reshape(
                -1
            ),
        ),
        (AllSampler(), lambda g: torch.arange(50)),
    ],
)
def test_full_availability_draws_what_the_samplers_drew_before(new, before) -> None:
    for r in range(10):
        assert torch.equal(
            new.sample(num_clients=50, generator=round_generator(r)), before(round_generator(r))
        )


def test_accounting_gives_availability_no_amplification() -> None:
    assert UniformSampler(10).sampling(100) == Sampling("fixed", 100, size=10)
    assert UniformSampler(10, availability=0.9).sampling(100) is None
    assert PoissonSampler(0.1, availability=0.5).sampling(100) == Sampling("poisson", 100, rate=0.1)
    assert AllSampler(availability=0.5).sampling(100) == Sampling("all", 100)


def test_client_level_dp_refuses_a_uniform_cohort_among_online_clients() -> None:
    with pytest.raises(privfl.ConfigError, match="cannot state its scheme"):
        tiny_federation(
            num_clients=40,
            sampler=UniformSampler(clients_per_round=10, availability=0.5),
            mechanisms=["dp"],
            options={"dp": {"secure_noise": True}},
        )


def test_client_level_dp_divides_by_the_clients_expected_online() -> None:
    fed = tiny_federation(
        num_clients=40,
        sampler=PoissonSampler(sample_rate=0.5, availability=0.5),
        mechanisms=["dp"],
        options={"dp": {"secure_noise": True, "noise_multiplier": 0.1}},
    )
    assert fed.expected_clients == 10  # 40 clients * 0.5 online * 0.5 sampled
    assert fed.run(1)[-1].values["epsilon"] > 0


def test_rounds_record_the_clients_that_were_online_and_chosen() -> None:
    fed = tiny_federation(num_clients=20, sampler=UniformSampler(15, availability=0.3))
    records = fed.run(4)
    for record in records:
        online = online_clients(20, 0.3, round_generator(record.round))
        assert record.clients == online.tolist()  # fewer than 15 online: all of them
        assert len(record.clients) < 15


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.5, math.nan, True])
@pytest.mark.parametrize(
    "make", [lambda a: UniformSampler(10, a), lambda a: PoissonSampler(0.1, a), AllSampler]
)
def test_availability_outside_zero_one_is_refused(make, value) -> None:
    with pytest.raises(privfl.ConfigError, match=r"availability = .* a number in \(0, 1\]"):
        make(value)
