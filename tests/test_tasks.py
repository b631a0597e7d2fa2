"""The Python API for regression: data forms, losses and metrics by task, clear refusals,
run folders that Python (not the command line) resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import privfl
from privfl.app.runner import resume_run
from privfl.builtin.evaluators import PlaintextEvaluator
from privfl.client import flatten_parameters
from privfl.data.partition import iid
from privfl.stacked_layers import unsupported
from privfl.tasks import LOSSES, accuracy, mse_loss, r_squared, squared_error
from privfl.testing import make_plugin_manager, tiny_dataset, tiny_federation
from privfl.vectorized import StackedTrainer


def regression_data(n: int = 240, features: int = 5, seed: int = 0):
    """A linear target with a little noise: (train, test) tensors."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, features, generator=generator)
    weights = torch.randn(features, generator=generator)
    targets = inputs @ weights + 0.1 * torch.randn(n, generator=generator)
    half = n * 3 // 4
    return (inputs[:half], targets[:half]), (inputs[half:], targets[half:])


def regression_federation(**overrides):
    train, test = regression_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 1)
    settings = {
        "model": model,
        "train": train,
        "test": test,
        "partition": iid(len(train[1]), 3, seed=0),
        "training": privfl.LocalTraining(batch_size=10, lr=0.05),
        "sampler": "all",
        "executor": "serial",
        "plugins": make_plugin_manager(),
    }
    settings.update(overrides)
    return privfl.Federation(**settings)


class Examples(Dataset):
    """A map-style dataset, as a user writes one: one (input, target) pair per index."""

    def __init__(self, pair):
        self.inputs, self.targets = pair

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]


def test_tensor_dataset_map_style_dataset_and_loader_train_like_tensors():
    train, test = tiny_dataset()
    pair = (train.inputs, train.targets)
    expected = tiny_federation(train=pair)
    expected.run(2)
    for form in (TensorDataset(*pair), Examples(pair), DataLoader(TensorDataset(*pair))):
        fed = tiny_federation(train=form, test=TensorDataset(test.inputs, test.targets))
        fed.run(2)
        assert torch.equal(fed.params, expected.params), type(form).__name__


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (TensorDataset(torch.zeros(4, 2)), "TensorDataset of 1 tensors"),
        (iter([(torch.zeros(2), 0)]), "map-style dataset"),
        ([(torch.zeros(2), 0), (torch.zeros(3), 1), (torch.zeros(2), 0)], "one shape"),
        ([torch.zeros(2), torch.zeros(2), torch.zeros(2)], r"train\[0\]"),
    ],
)
def test_unusable_data_forms_are_config_errors(data, message):
    with pytest.raises(privfl.ConfigError, match=message):
        tiny_federation(train=data)


def test_loss_by_name_and_unknown_names_list_the_choices():
    assert regression_federation(loss="mse").loss is mse_loss
    fed = tiny_federation(loss="cross_entropy")
    assert fed.loss is torch.nn.functional.cross_entropy
    with pytest.raises(privfl.ConfigError, match=r"loss = 'mean_squared'.*" + ", ".join(LOSSES)):
        regression_federation(loss="mean_squared")


def test_regression_is_inferred_from_float_targets_with_its_loss_and_metrics():
    fed = regression_federation()
    assert fed.task == "regression"
    assert fed.loss is mse_loss
    records = fed.run(8)
    first, last = records[0].metrics, records[-1].metrics
    assert set(last) == {"loss", "mse", "mae", "r2"}
    assert last["mse"] < first["mse"]
    assert last["r2"] > 0.95  # the target is linear with 1% noise variance
    assert last["loss"] == pytest.approx(last["mse"], rel=1e-5)


def test_accuracy_on_regression_targets_is_a_clear_error():
    with pytest.raises(privfl.ConfigError, match=r"metrics = 'accuracy'.*regression"):
        regression_federation(metrics={"accuracy": privfl.accuracy})
    with pytest.raises(privfl.ConfigError, match="floating point"):
        accuracy(torch.zeros(3, 2), torch.zeros(3))


def test_task_that_does_not_fit_the_targets_is_refused():
    with pytest.raises(privfl.ConfigError, match=r"task = 'classification'.*floating point"):
        regression_federation(task="classification")
    with pytest.raises(privfl.ConfigError, match=r"task = 'regression'.*integers"):
        tiny_federation(task="regression")
    with pytest.raises(privfl.ConfigError, match="task = 'ranking'"):
        tiny_federation(task="ranking")


def test_metrics_default_to_the_tasks_not_to_a_silent_accuracy():
    assert set(tiny_federation().metrics) == {"accuracy"}
    assert set(regression_federation().metrics) == {"mse", "mae", "r2"}


def test_r_squared_and_mse_match_their_definitions_over_the_whole_test_set():
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(50, generator=generator)
    outputs = (targets + 0.3 * torch.randn(50, generator=generator)).unsqueeze(1)
    y, f = targets.double().numpy(), outputs.double().numpy()[:, 0]
    expected = 1 - np.sum((y - f) ** 2) / np.sum((y - y.mean()) ** 2)
    assert float(r_squared(outputs, targets).double().mean()) == pytest.approx(expected, rel=1e-6)
    assert float(squared_error(outputs, targets).mean()) == pytest.approx(
        float(np.mean((y - f) ** 2)), rel=1e-6
    )
    fed = regression_federation(evaluators=[PlaintextEvaluator(batch_size=7)])
    scores = fed.evaluate()
    outputs = fed.global_model()(fed.test.inputs).detach()
    assert scores["r2"] == pytest.approx(float(r_squared(outputs, fed.test.targets).mean()), 1e-5)


def test_stacked_training_with_mse_equals_serial_training():
    (inputs, targets), _ = regression_data()
    data = privfl.TensorPair(inputs, targets)
    clients = [privfl.ClientData(data, torch.arange(a, b)) for a, b in ((0, 60), (60, 97))]
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    start = flatten_parameters(model).clone()
    training = privfl.LocalTraining(batch_size=10, lr=0.05)
    serial = privfl.LocalTrainer(model, mse_loss, training)
    results = [serial.train(c, start, seed=10 + k) for k, c in enumerate(clients)]
    updates = torch.empty(len(clients), start.numel())
    losses = StackedTrainer(model, mse_loss, training).train(clients, start, [10, 11], out=updates)
    torch.testing.assert_close(updates, torch.stack([r[0] for r in results]), rtol=0, atol=1e-5)
    assert losses == pytest.approx([r[1] for r in results], rel=1e-5)
    assert unsupported(model, torch.nn.functional.l1_loss) is not None


def test_label_flip_refuses_a_regression_task():
    with pytest.raises(privfl.ConfigError, match=r"attack = 'label-flip'.*regression"):
        regression_federation(attack="label-flip")
    regression_federation(attack="sign-flip")  # attacks on updates still apply


def test_api_run_folder_is_resumed_from_python_and_refused_by_the_command_line(tmp_path):
    straight = regression_federation()
    straight.run(4)
    first = regression_federation()
    first.run(2, run_dir=tmp_path)
    with pytest.raises(privfl.ConfigError, match=r"written by the Python API.*resume"):
        resume_run(tmp_path)
    with pytest.raises(privfl.ConfigError, match=r"federation.resume"):
        regression_federation().run(4, run_dir=tmp_path)  # would overwrite the run
    resumed = regression_federation()
    resumed.resume(tmp_path)
    resumed.run(4, run_dir=tmp_path)
    assert torch.equal(resumed.params, straight.params)
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(history) == 4
    other = regression_federation(training=privfl.LocalTraining(batch_size=5, lr=0.05))
    with pytest.raises(privfl.ConfigError, match="made with other training"):
        other.resume(tmp_path)
    with pytest.raises(privfl.ConfigError, match=r"checkpoint.safetensors"):
        regression_federation().resume(tmp_path / "missing")
