"""privfl-opacus: DP-SGD per owner, its accounting against Opacus' own, its refusals."""

from __future__ import annotations

import math

import privfl_opacus
import pytest
import torch
from opacus import PrivacyEngine
from privfl_opacus import DPSGD
from torch.utils.data import DataLoader, TensorDataset

import privfl
from privfl.algorithms.tabular_models import MLP
from privfl.builtin.datasets import DiabetesSource
from privfl.client import LocalTraining
from privfl.seeding import derive_seed
from privfl.tasks import mse_loss
from privfl.testing import make_plugin_manager

TRAINING = LocalTraining(epochs=1, batch_size=10, lr=0.05)


@pytest.fixture(scope="module")
def diabetes():
    return DiabetesSource().load()


def federation(data, trainer=None, **overrides):
    torch.manual_seed(0)
    settings = {
        "model": MLP(10, [16]),
        "client_data": data.client_data,
        "test": data.test,
        "training": TRAINING,
        "sampler": "all",
        "executor": "serial",
        "trainer": trainer,
        "plugins": make_plugin_manager([privfl_opacus]),
    }
    settings.update(overrides)
    return privfl.Federation(**settings)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning")
@pytest.mark.parametrize("rounds", [1, 7])
def test_owner_epsilon_equals_opacus_accountant_for_the_same_steps(diabetes, rounds):
    rows = diabetes.client_data.load(0).examples
    trainer = DPSGD(noise_multiplier=0.9, max_grad_norm=1.0, delta=1e-5)
    owner = trainer.build(MLP(10, [16]), mse_loss, TRAINING)
    model = MLP(10, [16])
    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        data_loader=DataLoader(TensorDataset(rows.inputs, rows.targets), batch_size=10),
        noise_multiplier=0.9,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    steps = 0
    for _ in range(rounds * TRAINING.epochs):
        for x, y in loader:
            optimizer.zero_grad()
            mse_loss(module(x), y).backward()
            optimizer.step()
            steps += 1
    assert steps == rounds * owner.steps_per_round(len(rows))
    expected = engine.get_epsilon(1e-5)
    assert owner.epsilon(len(rows), rounds) == pytest.approx(expected, rel=1e-6)


def test_each_owner_reports_its_epsilon_every_round_and_the_run_stops_at_the_target(diabetes):
    fed = federation(diabetes, DPSGD(noise_multiplier=1.0, target_epsilon=4.0))
    records = fed.run(100)
    assert fed.stop_reason is not None
    assert "record-level privacy budget" in fed.stop_reason
    assert 1 < len(records) < 100
    per_round = [r.values["owner_epsilon"] for r in records]
    assert all(set(e) == {"0", "1"} for e in per_round)
    maxima = [r.values["max_owner_epsilon"] for r in records]
    assert maxima == sorted(maxima)
    assert maxima[-1] <= 4.0
    owner = fed.trainer.build(fed.model, fed.loss, fed.training)
    rows = len(diabetes.client_data.load(0))
    assert per_round[-1]["0"] == owner.epsilon(rows, len(records))
    assert owner.epsilon(rows, len(records) + 1) > 4.0  # one more round would pass it


def test_owners_train_from_the_global_parameters_not_from_each_other(diabetes):
    fed = federation(diabetes, DPSGD(noise_multiplier=1.0))
    start = fed.params.clone()
    fed.run(1)
    rows = [len(diabetes.client_data.load(k)) for k in range(2)]
    trainer = fed.trainer.build(fed.model, fed.loss, fed.training)
    updates = []
    for client in range(2):
        seed = derive_seed(0, "client", 1, client)
        data = diabetes.client_data.load(client)
        update, _ = trainer.train(data, start.clone(), seed=seed, round=1, statistics={})
        updates.append(update)
    weights = torch.tensor(rows, dtype=torch.float32)
    expected = start + (weights[:, None] * torch.stack(updates)).sum(0) / weights.sum()
    torch.testing.assert_close(fed.params, expected, rtol=0, atol=1e-6)


def test_dp_sgd_changes_training_and_is_reproducible(diabetes):
    plain = federation(diabetes)
    private = federation(diabetes, DPSGD(noise_multiplier=1.0))
    again = federation(diabetes, DPSGD(noise_multiplier=1.0))
    for fed in (plain, private, again):
        fed.run(2)
    assert not torch.allclose(plain.params, private.params)
    assert torch.equal(private.params, again.params)
    assert math.isfinite(private.history[-1].metrics["mse"])


def test_process_executor_gives_the_same_bytes(diabetes):
    serial = federation(diabetes, DPSGD(noise_multiplier=1.0))
    serial.run(2)
    with federation(diabetes, DPSGD(noise_multiplier=1.0), executor="process") as process:
        process.run(2)
    assert torch.equal(serial.params, process.params)


def test_vectorized_executor_and_unsupported_layers_are_refused(diabetes):
    with pytest.raises(privfl.ConfigError, match=r"executor = 'vectorized'.*dp-sgd"):
        federation(diabetes, DPSGD(), executor="vectorized")

    class Recurrent(torch.nn.Module):  # Opacus needs its DPLSTM for per-sample gradients
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(10, 4, batch_first=True)
            self.out = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.out(self.lstm(x.unsqueeze(1))[0][:, -1])

    with pytest.raises(privfl.ConfigError, match=r"a model DP-SGD can train.*LSTM"):
        federation(diabetes, DPSGD(), model=Recurrent())


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"noise_multiplier": 0}, "noise_multiplier"),
        ({"delta": 1.0}, "delta"),
        ({"target_epsilon": -1.0}, "target_epsilon"),
        ({"max_grad_norm": float("inf")}, "max_grad_norm"),
    ],
)
def test_bad_settings_are_config_errors(options, key):
    with pytest.raises(privfl.ConfigError, match=key):
        DPSGD(**options)
