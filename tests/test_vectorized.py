"""Stacked local training equals one-at-a-time training to float round-off.

:class:`privfl.vectorized.StackedTrainer` trains many clients as one batched
computation; each client must still get its own batch order, batches, per-batch mean
loss, step count and FedProx pull, so its update matches :class:`LocalTrainer`'s
within :data:`privfl.vectorized.TOLERANCE`. Models it cannot stack train one at a
time with a warning, never wrongly.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import privfl
from privfl.algorithms.models import CNN, TwoNN
from privfl.builtin.process_executor import ProcessExecutor
from privfl.builtin.protocol import _stacked
from privfl.client import ClientData, LocalTrainer, LocalTraining, flatten_parameters
from privfl.client_runtime import ClientHost, _parts
from privfl.components import TensorPair
from privfl.stacked_layers import unsupported
from privfl.testing import tiny_federation
from privfl.vectorized import (
    SINGLE_THREAD_FLOPS,
    TOLERANCE,
    StackedTrainer,
    _schedule,
    forward_flops,
)


def _images(n: int, seed: int = 0) -> TensorPair:
    generator = torch.Generator().manual_seed(seed)
    return TensorPair(
        torch.rand(n, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (n,), generator=generator),
    )


def _compare(
    model: nn.Module, training: LocalTraining, sizes: list[int], data: TensorPair | None = None
):
    """Train clients of ``sizes`` examples both ways; return (serial, stacked, losses)."""
    data = _images(sum(sizes)) if data is None else data
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    clients = [ClientData(data, torch.arange(a, b)) for a, b in itertools.pairwise(bounds)]
    start = flatten_parameters(model).clone()
    serial = LocalTrainer(model, F.cross_entropy, training)
    results = [serial.train(c, start, seed=10 + k) for k, c in enumerate(clients)]
    updates = torch.empty(len(clients), start.numel())
    losses = StackedTrainer(model, F.cross_entropy, training).train(
        clients, start, [10 + k for k in range(len(clients))], out=updates
    )
    return torch.stack([r[0] for r in results]), updates, [r[1] for r in results], losses


def _assert_close(serial: torch.Tensor, stacked: torch.Tensor) -> None:
    scale = serial.abs().amax(dim=1, keepdim=True)
    assert float(((serial - stacked).abs() / scale).max()) <= TOLERANCE


@pytest.mark.parametrize(
    ("training", "sizes"),
    [
        (LocalTraining(epochs=1, batch_size=10, lr=0.1), [30, 30, 30]),
        # ragged: clients of different lengths, last batches shorter than the rest
        (LocalTraining(epochs=2, batch_size=7, lr=0.05), [3, 23, 41, 16]),
        (LocalTraining(epochs=1, batch_size=10, lr=0.1, proximal_mu=0.5), [25, 12, 40]),
        # every client smaller than a batch: batches only as wide as the largest client
        (LocalTraining(epochs=3, batch_size=10, lr=0.1), [3, 1, 6, 2]),
        # one step each: the updates are written without copies of the parameters
        (LocalTraining(epochs=1, batch_size=10, lr=0.1, proximal_mu=0.5), [3, 1, 6, 2]),
    ],
    ids=["equal", "ragged-two-epochs", "fedprox", "clients-smaller-than-a-batch", "one-step"],
)
def test_stacked_2nn_updates_and_losses_equal_serial(training, sizes):
    torch.manual_seed(0)
    serial, stacked, serial_losses, stacked_losses = _compare(TwoNN(), training, sizes)
    _assert_close(serial, stacked)
    assert stacked_losses == pytest.approx(serial_losses, rel=1e-5)


def test_batches_of_small_clients_are_as_wide_as_the_largest_client():
    data = _images(12)
    clients = [ClientData(data, torch.arange(a, b)) for a, b in [(0, 3), (3, 4), (4, 10)]]
    schedule = _schedule(clients, [1, 2, 3], epochs=2, batch=10)
    assert schedule.weights.shape == (2, 3, 6)  # [steps, clients, batch]
    assert schedule.order == [0, 1, 2]
    assert schedule.steps == [2, 2, 2]
    assert schedule.weights.sum(dim=2).tolist() == [[3, 1, 6], [3, 1, 6]]
    # each client's epoch holds each of its examples once
    assert sorted(schedule.rows[0, 2].tolist()) == list(range(4, 10))
    assert sorted(schedule.rows[1, 0, :3].tolist()) == [0, 1, 2]


def test_stacked_cnn_equals_serial():
    torch.manual_seed(0)
    # Few steps with a small step size: the CNN's own training amplifies round-off
    # (a 1e-7 nudge of the start can move a 20-step update by a quarter), so longer
    # runs compare chaos, not arithmetic.
    training = LocalTraining(epochs=1, batch_size=5, lr=0.01)
    serial, stacked, serial_losses, stacked_losses = _compare(CNN(), training, [10, 7, 15])
    _assert_close(serial, stacked)
    assert stacked_losses == pytest.approx(serial_losses, rel=1e-5)


def _perceptron(bias: bool = True, activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 32, bias=bias), activation(), nn.Linear(32, 10, bias=bias)
    )


def _tabular(n: int) -> TensorPair:
    generator = torch.Generator().manual_seed(3)
    return TensorPair(torch.randn(n, 20, generator=generator), torch.randint(0, 3, (n,)))


@pytest.mark.parametrize(
    ("model", "data", "steps_by_hand"),
    [
        (lambda: _perceptron(bias=False), None, True),
        (lambda: nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)), _tabular, True),
        (lambda: _perceptron(activation=nn.Tanh), None, False),
    ],
    ids=["no-bias", "tabular-no-flatten", "tanh-autograd"],
)
def test_other_perceptrons_equal_serial(model, data, steps_by_hand):
    """Perceptrons train with hand-written steps, others with autograd; both match serial,
    including FedProx's pull and ragged batches."""
    torch.manual_seed(0)
    sizes = [3, 23, 41, 16]
    model = model()
    training = LocalTraining(epochs=2, batch_size=7, lr=0.05, proximal_mu=0.1)
    trainer = StackedTrainer(model, F.cross_entropy, training)
    assert (trainer.mlp_layers is not None) == steps_by_hand
    pair = data(sum(sizes)) if data else None
    serial, stacked, serial_losses, stacked_losses = _compare(model, training, sizes, pair)
    _assert_close(serial, stacked)
    assert stacked_losses == pytest.approx(serial_losses, rel=1e-5)


def test_soft_labels_train_with_autograd_and_equal_serial():
    """Cross-entropy against class probabilities is not what the hand-written steps
    compute (they take class indices): such data trains with autograd."""
    torch.manual_seed(0)
    images = _images(21).inputs
    data = TensorPair(images, torch.softmax(torch.randn(21, 10), dim=1))
    training = LocalTraining(batch_size=4)
    serial, stacked, serial_losses, stacked_losses = _compare(TwoNN(), training, [12, 9], data)
    _assert_close(serial, stacked)
    assert stacked_losses == pytest.approx(serial_losses, rel=1e-5)


def test_the_2nn_trains_without_autograd():
    """Under ``no_grad`` autograd has no graph to differentiate, so only the hand-written
    steps (no graph, no optimizer pass) can train; they still move every parameter."""
    torch.manual_seed(0)
    clients = [ClientData(_images(40), torch.arange(k, 40, 2)) for k in range(2)]
    for model, by_hand in [(TwoNN(), True), (_perceptron(activation=nn.Tanh), False)]:
        start = flatten_parameters(model).clone()
        trainer = StackedTrainer(model, F.cross_entropy, LocalTraining())
        updates = torch.zeros(2, start.numel())
        with torch.no_grad():
            if by_hand:
                trainer.train(clients, start, [1, 2], out=updates)
            else:
                with pytest.raises(RuntimeError, match="does not require grad"):
                    trainer.train(clients, start, [1, 2], out=updates)
        assert bool((updates != 0).any(dim=1).all()) == by_hand


def test_a_wrong_stacked_layer_would_be_caught():
    """The comparison can fail: swapping two clients' data moves their updates."""
    torch.manual_seed(0)
    serial, stacked, _, _ = _compare(TwoNN(), LocalTraining(), [20, 20])
    with pytest.raises(AssertionError):
        _assert_close(serial, stacked.flip(0))


def test_stacked_training_leaves_the_start_alone():
    torch.manual_seed(0)
    model = TwoNN()
    start = flatten_parameters(model).clone()
    kept = start.clone()
    data = _images(20)
    StackedTrainer(model, F.cross_entropy, LocalTraining()).train(
        [ClientData(data, torch.arange(20))], start, [0], out=torch.empty(1, start.numel())
    )
    assert torch.equal(start, kept)


class _OwnForward(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class _OwnSequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x).relu()


def _Hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 2))
    model[0].register_forward_hook(lambda module, args, out: out * 2)
    return model


def _Parametrized() -> nn.Module:
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 2)))


@pytest.mark.parametrize(
    ("model", "loss", "reason"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), F.cross_entropy, "Dropout"),
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), F.cross_entropy, "LayerNorm"),
        (nn.Sequential(nn.Flatten(0)), F.cross_entropy, "Flatten"),
        (nn.Linear(4, 2), F.mse_loss, "cross-entropy"),
        (_Hooked(), F.cross_entropy, "hooks"),
        (_Parametrized(), F.cross_entropy, "parametrized"),
        (_OwnForward(4, 2), F.cross_entropy, "_OwnForward"),
        (_OwnSequential(nn.Linear(4, 2)), F.cross_entropy, "_OwnSequential"),
        (nn.Linear(4, 2), nn.CrossEntropyLoss(label_smoothing=0.1), "cross-entropy"),
    ],
)
def test_unsupported_models_and_losses_are_named(model, loss, reason):
    assert reason in unsupported(model, loss)
    with pytest.raises(ValueError, match=reason):
        StackedTrainer(model, loss, LocalTraining())


def test_supported_models():
    assert unsupported(TwoNN(), F.cross_entropy) is None
    assert unsupported(CNN(), nn.CrossEntropyLoss()) is None


def test_the_vectorized_executor_runs_rounds_like_serial():
    serial = tiny_federation(num_clients=5)
    serial.run(3)
    vectorized = tiny_federation(num_clients=5, executor="vectorized")
    vectorized.run(3)
    assert torch.allclose(serial.params, vectorized.params, rtol=0, atol=1e-5)
    assert not torch.equal(serial.params, tiny_federation(num_clients=5).params)
    for a, b in zip(serial.history, vectorized.history, strict=True):
        assert a.clients == b.clients
        assert a.num_examples == b.num_examples
        assert a.metrics["accuracy"] == pytest.approx(b.metrics["accuracy"], abs=0.02)


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_mechanisms_and_secure_aggregation_still_apply_per_client():
    options = {"dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip": 0.05}}
    settings = {"num_clients": 6, "mechanisms": ["dp", "secagg+"], "options": options}
    serial = tiny_federation(**settings)
    (serial_record,) = serial.run(1)
    vectorized = tiny_federation(executor="vectorized", **settings)
    (record,) = vectorized.run(1)
    assert record.values["secagg_contributors"] == 6
    assert record.values["epsilon"] == serial_record.values["epsilon"]
    assert record.train_loss == pytest.approx(serial_record.train_loss, rel=1e-5)
    # each client clipped to 0.05 and added its own noise share: the same model as serial
    assert torch.allclose(serial.params, vectorized.params, rtol=0, atol=1e-4)


def test_malicious_clients_train_one_at_a_time_and_match_serial():
    settings = {"num_clients": 6, "attack": "label-flip", "malicious_fraction": 0.5}
    serial = tiny_federation(**settings)
    serial.run(2)
    vectorized = tiny_federation(executor="vectorized", **settings)
    vectorized.run(2)
    assert torch.allclose(serial.params, vectorized.params, rtol=0, atol=1e-5)


def test_an_unstackable_model_falls_back_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    serial = tiny_federation(model=model, executor="serial")
    serial.run(2)
    fed = tiny_federation(model=model, executor="vectorized")
    with pytest.warns(privfl.PerformanceWarning, match="LayerNorm") as caught:
        fed.run(2)
    assert len(caught) == 1
    assert torch.equal(serial.params, fed.params)  # one at a time: the bytes of serial


@pytest.mark.parametrize("executor", ["serial", "vectorized"])
def test_the_process_executor_with_stacking_gives_the_bytes_of_in_process(executor):
    with tiny_federation(num_clients=6, executor=ProcessExecutor(vectorize=True)) as fed:
        fed.run(2)
    reference = tiny_federation(num_clients=6, executor=executor)
    reference.run(2)
    if executor == "vectorized":
        assert torch.equal(reference.params, fed.params)
    else:
        assert torch.allclose(reference.params, fed.params, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", [TwoNN(), CNN()], ids=["2nn", "cnn"])
def test_forward_flops_match_torch_flop_counter(model):
    from torch.utils.flop_counter import FlopCounterMode

    batch = torch.zeros(10, 1, 28, 28)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    assert forward_flops(model, batch[0]) * 10 == counter.get_total_flops()
    assert (forward_flops(model, batch[0]) * 10 < SINGLE_THREAD_FLOPS) == isinstance(model, TwoNN)


def test_large_steps_train_one_at_a_time_with_the_bytes_of_serial():
    """The CNN's steps keep the cores busy alone: the vectorized executor does not stack
    them (stacked measured slower), so its results are serial's, bit for bit."""
    train = _images(40)
    settings = {
        "model": CNN(),
        "train": train,
        "test": _images(20, seed=1),
        "partition": [np.arange(k, 40, 4) for k in range(4)],
    }
    serial = tiny_federation(**settings)
    serial.run(1)
    vectorized = tiny_federation(executor="vectorized", **settings)
    vectorized.run(1)
    assert torch.equal(serial.params, vectorized.params)


@pytest.mark.parametrize(
    ("sizes", "count", "expected"),
    [
        ([10, 10, 10, 10], 2, [(0, 2), (2, 4)]),
        ([100, 1, 1, 1], 2, [(0, 1), (1, 4)]),
        ([5], 4, [(0, 1)]),
        ([3, 3, 3], 1, [(0, 3)]),
    ],
)
def test_stack_parts_are_consecutive_and_balanced(sizes, count, expected):
    assert _parts(sizes, count) == expected


def test_a_stack_cut_into_thread_parts_gives_the_bytes_of_one_stack():
    fed = tiny_federation(num_clients=7)
    app = fed.client_app
    tasks = {
        c: privfl.Message(
            "train", {"round": 1, "config": [], "seed": 100 + c}, {"params": fed.params}
        )
        for c in range(7)
    }
    one = ClientHost(app, stack=True, threads=1).handle_all(tasks)
    parts = ClientHost(app, stack=True, threads=3).handle_all(tasks)
    for c in range(7):
        assert torch.equal(one[c].tensors["update"], parts[c].tensors["update"])
        assert one[c].values == parts[c].values
    assert not torch.equal(one[0].tensors["update"], one[1].tensors["update"])


def test_the_server_reads_rows_of_one_matrix_without_copying_them():
    matrix = torch.randn(4, 6)
    view = _stacked(list(matrix))
    assert view.data_ptr() == matrix.data_ptr()
    assert torch.equal(view, matrix)
    shuffled = [matrix[1], matrix[0], matrix[2], matrix[3]]
    copied = _stacked(shuffled)
    assert copied.data_ptr() != matrix.data_ptr()
    assert torch.equal(copied, torch.stack(shuffled))
    assert torch.equal(_stacked([matrix[0], matrix[2]]), matrix[[0, 2]])


@pytest.mark.parametrize(
    ("environment", "expected"),
    [({}, "30000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, None), ({"GOMP_SPINCOUNT": "7"}, "7")],
)
def test_privfl_imported_first_makes_idle_threads_sleep_unless_told(environment, expected):
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}}
    script = "import os, privfl; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run(
        [sys.executable, "-c", script], env={**env, **environment}, capture_output=True, text=True
    )
    assert out.stdout.strip() == str(expected), out.stderr
