"""The plugin's event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import privfl_tensorboard
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

import privfl
from privfl.cli.main import main
from privfl.testing import tiny_federation

FAST = ["--model", "2nn", "--clients", "20", "--clients-per-round", "5"]


def read_events(folder: Path) -> EventAccumulator:
    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_the_entry_point_registers_the_plugin(capsys):
    pm = privfl.get_plugin_manager()
    assert pm.get_plugin("tensorboard") is privfl_tensorboard
    assert pm.distributions["tensorboard"].startswith("privfl-tensorboard ")
    assert main(["plugins"]) == 0
    assert "tensorboard (privfl-tensorboard " in capsys.readouterr().out


def test_every_round_s_numbers_are_scalars_at_their_round(tmp_path, monkeypatch):
    monkeypatch.delenv(privfl_tensorboard.ENVIRONMENT, raising=False)
    fed = tiny_federation(plugins=[privfl_tensorboard])
    records = fed.run(3, run_dir=tmp_path / "run")
    events = read_events(tmp_path / "run" / "tensorboard")
    tags = set(events.Tags()["scalars"])
    assert {"metrics/accuracy", "metrics/loss", "round/train_loss", "round/seconds"} <= tags
    for tag, value_of in [
        ("metrics/accuracy", lambda r: r.metrics["accuracy"]),
        ("round/train_loss", lambda r: r.train_loss),
        ("round/clients", lambda r: len(r.clients)),
    ]:
        expected = {r.round: value_of(r) for r in records}
        assert scalars(events, tag) == pytest.approx(expected, rel=1e-6)  # float32 in events


def test_dp_and_secure_aggregation_values_are_scalars_and_the_config_is_text(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv(privfl_tensorboard.ENVIRONMENT, raising=False)
    run_dir = tmp_path / "run"
    flags = [*FAST, "--rounds", "2", "--dp", "--dp-noise", "0.5", "--secagg", "secagg"]
    assert main(["run", *flags, "--run-dir", str(run_dir)]) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    events = read_events(run_dir / "tensorboard")
    epsilon = scalars(events, "values/epsilon")
    assert epsilon == pytest.approx({r["round"]: r["epsilon"] for r in history}, rel=1e-6)
    assert set(scalars(events, "values/secagg_kb_sent_per_client")) == {1, 2}
    assert not any("secagg_bytes_sent" in tag for tag in events.Tags()["scalars"])
    (text,) = events.Tensors("config/text_summary")
    config = make_ndarray(text.tensor_proto).item().decode()
    assert config == "```toml\n" + (run_dir / "config.toml").read_text() + "```"


def test_a_resumed_run_shows_each_round_once(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(privfl_tensorboard.ENVIRONMENT, raising=False)
    run_dir = tmp_path / "run"
    assert main(["run", *FAST, "--rounds", "2", "--run-dir", str(run_dir)]) == 0
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace("rounds = 2", "rounds = 3"))
    assert main(["resume", str(run_dir)]) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    events = read_events(run_dir / "tensorboard")
    accuracy = [(e.step, e.value) for e in events.Scalars("metrics/accuracy")]
    assert [step for step, _ in accuracy] == [1, 2, 3]
    assert [value for _, value in accuracy] == pytest.approx([r["accuracy"] for r in history])


def test_the_environment_variable_gathers_runs_under_one_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(privfl_tensorboard.ENVIRONMENT, str(tmp_path / "tb"))
    tiny_federation(plugins=[privfl_tensorboard]).run(1, run_dir=tmp_path / "first")
    tiny_federation(plugins=[privfl_tensorboard]).run(1)
    assert not (tmp_path / "first" / "tensorboard").exists()
    assert {"metrics/accuracy"} <= set(read_events(tmp_path / "tb" / "first").Tags()["scalars"])
    (session,) = [p for p in (tmp_path / "tb").iterdir() if p.name != "first"]
    assert session.name.startswith("session-")
    assert "```json" in str(read_events(session).Tensors("config/text_summary")[0])


def test_without_a_run_folder_or_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(privfl_tensorboard.ENVIRONMENT, raising=False)
    monkeypatch.chdir(tmp_path)
    fed = tiny_federation(plugins=[privfl_tensorboard])
    fed.run(1)
    assert list(tmp_path.iterdir()) == []
    assert privfl_tensorboard.log_dir(None, None) is None


def test_round_scalars_keep_finite_numbers_only():
    record = privfl.RoundRecord(
        round=4,
        clients=[0, 1, 2],
        num_examples=30,
        train_loss=float("nan"),
        seconds=0.5,
        metrics={"accuracy": 0.75},
        values={"epsilon": 1.5, "aborted": "too few", "secure": True, "sent": {"0": 10}},
    )
    assert privfl_tensorboard.round_scalars(record) == {
        "metrics/accuracy": 0.75,
        "round/seconds": 0.5,
        "round/num_examples": 30.0,
        "round/clients": 3.0,
        "values/epsilon": 1.5,
    }
