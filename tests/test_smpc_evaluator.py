"""The ``smpc`` evaluator: encrypted accuracy next to plaintext, in runs and from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import privfl
from privfl.algorithms.models import CNN, TwoNN
from privfl.builtin.smpc_evaluator import SMPCEvaluator
from privfl.cli.main import main
from privfl.data.mnist import images_to_float, load_mnist
from privfl.data.partition import iid
from privfl.testing import make_plugin_manager, tiny_federation

MNIST = Path(__file__).parents[1] / ".." / "shared" / "data" / "mnist"


def _sequential_tiny(**overrides):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return tiny_federation(model=model, **overrides)


def test_smpc_runs_only_after_the_last_round_and_matches_plaintext():
    fed = _sequential_tiny(evaluators=["plaintext", "smpc"])
    records = fed.run(3)
    assert ["smpc_accuracy" in r.metrics for r in records] == [False, False, True]
    final = records[-1].metrics
    assert final["smpc_images"] == len(fed.test)
    assert final["smpc_plaintext_accuracy"] == pytest.approx(final["accuracy"])
    assert abs(final["smpc_accuracy"] - final["smpc_plaintext_accuracy"]) <= 0.01
    assert final["smpc_online_bytes_per_image"] > 0
    assert final["smpc_offline_ms_per_image"] > 0
    assert fed.evaluations["smpc"]["smpc_accuracy"] == final["smpc_accuracy"]


def test_revealing_only_the_accuracy_gives_the_same_count():
    fed = _sequential_tiny()
    fed.run(2)
    model = fed.global_model()
    kwargs = {"model": model, "test": fed.test, "loss": fed.loss, "metrics": fed.metrics}
    predictions = SMPCEvaluator(reveal="predictions", limit=120).evaluate(**kwargs)
    accuracy_only = SMPCEvaluator(reveal="accuracy", limit=120).evaluate(**kwargs)
    assert accuracy_only["smpc_accuracy"] == predictions["smpc_accuracy"]
    assert accuracy_only["smpc_images"] == 120


def test_progress_is_reported_per_batch():
    fed = _sequential_tiny()
    seen = []
    evaluator = SMPCEvaluator(batch_size=64)
    evaluator.on_progress = lambda done, total: seen.append((done, total))
    evaluator.evaluate(model=fed.global_model(), test=fed.test, loss=fed.loss, metrics={})
    assert seen == [(64, 200), (128, 200), (192, 200), (200, 200)]


def test_non_sequential_models_are_refused_with_the_reason():
    fed = tiny_federation(evaluators=["smpc"])  # a bare Linear, not a Sequential
    with pytest.raises(privfl.ConfigError, match=r"torch\.nn\.Sequential model"):
        fed.run(1)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"limit": -1}, "smpc.limit = -1"),
        ({"batch_size": 0}, "smpc.batch_size = 0"),
        ({"frac_bits": 40}, "smpc.frac_bits = 40"),
        ({"reveal": "logits"}, "smpc.reveal = 'logits'"),
    ],
)
def test_bad_smpc_options_are_refused(options, key):
    with pytest.raises(privfl.ConfigError, match=key):
        make_plugin_manager().components.create("evaluator", "smpc", options)
    with pytest.raises(privfl.ConfigError, match=key.removeprefix("smpc.")):
        SMPCEvaluator(**options)


def test_cli_run_with_smpc_and_evaluate_command(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--model", "2nn", "--clients", "20", "--clients-per-round", "5", "--rounds", "2"]
    argv = ["run", *flags, "--eval", "plaintext", "--eval", "smpc", "--option", "smpc.limit=200"]
    assert main([*argv, "--run-dir", str(run_dir)]) == 0
    written = json.loads((run_dir / "evaluation-smpc.json").read_text())
    assert written["backend"] == "smpc"
    assert written["smpc_images"] == 200
    assert abs(written["smpc_accuracy"] - written["smpc_plaintext_accuracy"]) <= 0.01
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--backend", "smpc", "--limit", "100"]) == 0
    out = capsys.readouterr().out
    assert "smpc_accuracy" in out
    assert "smpc_offline_ms_per_image" in out
    assert json.loads((run_dir / "evaluation-smpc.json").read_text())["smpc_images"] == 100
    assert main(["evaluate", str(run_dir)]) == 0
    plaintext = json.loads((run_dir / "evaluation-plaintext.json").read_text())
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    assert plaintext["accuracy"] == pytest.approx(history[-1]["accuracy"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "missing-run"], "a finished run folder"),
        (["evaluate", "RUN", "--backend", "smcp"], "evaluator = 'smcp'"),
        (["evaluate", "RUN", "--limit", "-3"], "limit = -3"),
    ],
)
def test_evaluate_bad_input_exits_2(tmp_path, capsys, argv, message):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                "2nn",
                "--clients",
                "10",
                "--rounds",
                "1",
                "--clients-per-round",
                "2",
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )
    capsys.readouterr()
    argv = [
        str(run_dir) if a == "RUN" else str(tmp_path / a) if a == "missing-run" else a for a in argv
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().out


def _train_on_real_mnist(model, rounds, lr):
    data = load_mnist(MNIST)
    train = privfl.TensorPair(images_to_float(data.train_images), data.train_labels)
    test = privfl.TensorPair(images_to_float(data.test_images), data.test_labels)
    fed = privfl.Federation(
        model=model,
        train=train,
        test=test,
        partition=iid(len(train), 100, seed=0),
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=lr),
        options={"uniform": {"clients_per_round": 10}},
        eval_every=rounds,
    )
    fed.run(rounds)
    return fed


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="real MNIST not beside the repository")
def test_encrypted_accuracy_of_a_privfl_2nn_on_the_full_mnist_test_set():
    torch.manual_seed(0)
    fed = _train_on_real_mnist(TwoNN(), rounds=20, lr=0.1)
    scores = SMPCEvaluator(batch_size=500).evaluate(
        model=fed.global_model(), test=fed.test, loss=fed.loss, metrics=fed.metrics
    )
    assert scores["smpc_images"] == 10_000
    assert scores["smpc_plaintext_accuracy"] > 0.93
    assert abs(scores["smpc_accuracy"] - scores["smpc_plaintext_accuracy"]) <= 0.005


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.exists(), reason="real MNIST not beside the repository")
def test_encrypted_accuracy_of_a_privfl_cnn_on_1000_mnist_test_images():
    torch.manual_seed(0)
    fed = _train_on_real_mnist(CNN(), rounds=5, lr=0.1)
    scores = SMPCEvaluator(limit=1000, batch_size=100).evaluate(
        model=fed.global_model(), test=fed.test, loss=fed.loss, metrics=fed.metrics
    )
    assert scores["smpc_images"] == 1000
    assert scores["smpc_plaintext_accuracy"] > 0.9
    assert abs(scores["smpc_accuracy"] - scores["smpc_plaintext_accuracy"]) <= 0.005
