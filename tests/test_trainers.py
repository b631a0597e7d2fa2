"""A Trainer replaces the clients' plain SGD: it gets each client's data, the global
parameters, the seed and the round, and its statistics travel with the reply."""

from __future__ import annotations

import pytest
import torch

import privfl
from privfl.components import Trainer
from privfl.testing import tiny_federation


class HalfStep(Trainer):
    """Plain SGD at half the step size, recording what it was given."""

    name = "half-step"

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def build(self, model, loss, training):
        outer = self
        trainer = privfl.LocalTrainer(model, loss, privfl.LocalTraining(lr=training.lr / 2))

        class Built:
            def train(self, data, global_params, *, seed, round, statistics):
                outer.seen.append((round, len(data)))
                statistics["rows_seen"] = float(len(data))
                return trainer.train(data, global_params, seed=seed)

        return Built()


class Collector:
    """Keeps the statistics of every client result the server receives."""

    def __init__(self) -> None:
        self.statistics: list[dict[str, float]] = []

    @privfl.hookimpl
    def privfl_update_received(self, federation, round, result):
        self.statistics.append(dict(result.statistics))


def test_a_trainer_trains_every_client_with_the_round_and_reports_statistics():
    trainer, collector = HalfStep(), Collector()
    fed = tiny_federation(trainer=trainer, executor="serial", plugins=[collector])
    fed.run(2)
    assert sorted(trainer.seen) == [(1, 50)] * 4 + [(2, 50)] * 4
    assert collector.statistics == [{"rows_seen": 50.0}] * 8
    half = tiny_federation(training=privfl.LocalTraining(lr=0.05), executor="serial")
    half.run(2)
    assert torch.equal(fed.params, half.params)  # the trainer's SGD, not the default
    assert fed.settings["trainer"] == "half-step"


def test_clients_of_a_trainer_are_not_stacked_and_label_attacks_are_refused():
    fed = tiny_federation(trainer=HalfStep(), executor="vectorized")
    with pytest.warns(privfl.PerformanceWarning, match="trainer 'half-step'"):
        fed.run(1)
    with pytest.raises(privfl.ConfigError, match="an attack on updates"):
        tiny_federation(trainer=HalfStep(), attack="label-flip")
    with pytest.raises(privfl.ConfigError, match="Trainer instance"):
        tiny_federation(trainer="half-step")
