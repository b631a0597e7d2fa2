"""Tampered run folders: ``privfl resume`` and ``privfl evaluate`` exit 2 with one line.

One small run is made per test module; each case copies it, damages one file the way
a crash, a full disk or a careless edit would, and checks that the command refuses it
with an error line and no traceback, and leaves the files it was given as they were.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from privfl.cli.main import main

FLAGS = ["--model", "2nn", "--clients", "10", "--sampler", "all", "--rounds", "2"]


def _exit_status(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("made") / "run"
    assert main(["run", *FLAGS, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _more_rounds(run_dir: Path) -> None:
    """Make the finished run resumable: ask for a third round."""
    config = run_dir / "config.toml"
    config.write_text(config.read_text().replace("rounds = 2", "rounds = 3"))


def _garbage(name: str, data: bytes = b"\x00garbage\xff") -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(data)


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])

    return damage


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _append(name: str, text: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        with (run / name).open("a") as file:
            file.write(text)

    return damage


def _prepend_config(line: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        config = run / "config.toml"
        config.write_text(line + "\n" + config.read_text())

    return damage


def _foreign_tensors(name: str, tensors: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    return lambda run: save_file(tensors, str(run / name))


def _prepend_history(line: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        history = run / "history.jsonl"
        history.write_text(line + "\n" + history.read_text())

    return damage


RESUME_CASES: dict[str, Callable[[Path], None]] = {
    "history-garbage-line": _prepend_history("{not json"),
    "history-not-an-object": _prepend_history("[1, 2]"),
    "history-no-round": _prepend_history('{"accuracy": 0.5}'),
    "history-binary": _garbage("history.jsonl"),
    "checkpoint-garbage": _garbage("checkpoint.safetensors"),
    "checkpoint-truncated": _truncate("checkpoint.safetensors"),
    "checkpoint-empty": _garbage("checkpoint.safetensors", b""),
    "checkpoint-other-tensors": _foreign_tensors(
        "checkpoint.safetensors", {"weights": torch.zeros(3)}
    ),
    "checkpoint-wrong-shape": _foreign_tensors(
        "checkpoint.safetensors", {"params": torch.zeros(3)}
    ),
    "config-garbage": _garbage("config.toml"),
    "config-missing": _remove("config.toml"),
    "config-dp-added": _prepend_config('mechanisms = ["dp"]'),
    "config-unknown-key": _prepend_config("roundz = 3"),
}

VALID_DAMAGE: dict[str, Callable[[Path], None]] = {
    "history-partial-last-line": _append("history.jsonl", '{"round": 3, "accu'),
    "status-garbage": _garbage("status.json"),
    "status-missing": _remove("status.json"),
}
"""Damage that resume documents as harmless: a kill's partial last history line (that
round reruns) and the status file, which resume rewrites and never reads."""

EVALUATE_CASES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "model-garbage": (_garbage("model.safetensors"), []),
    "model-truncated": (_truncate("model.safetensors"), []),
    "model-missing": (_remove("model.safetensors"), []),
    "model-wrong-shape": (
        _foreign_tensors("model.safetensors", {"0.weight": torch.zeros(2, 2)}),
        [],
    ),
    "backend-unknown": (lambda run: None, ["--backend", "nosuch"]),
    "limit-negative": (lambda run: None, ["--limit", "-1"]),
    "config-garbage": (_garbage("config.toml"), []),
}


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def _check_refused(run: Path, argv: list[str], capsys) -> None:
    before = _snapshot(run)
    capsys.readouterr()
    assert _exit_status(argv) == 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "error" in output, output
    assert "Traceback" not in output
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k != "run.lock"} == {
        k: v for k, v in before.items() if k != "run.lock"
    }


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_resume_refuses_a_damaged_run_folder_with_one_line(finished, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _more_rounds(run)
    RESUME_CASES[name](run)
    _check_refused(run, ["resume", str(run)], capsys)


@pytest.mark.parametrize("name", list(VALID_DAMAGE))
def test_resume_goes_on_past_documented_harmless_damage(finished, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _more_rounds(run)
    VALID_DAMAGE[name](run)
    assert main(["resume", str(run)]) == 0
    rounds = [
        json.loads(line)["round"] for line in (run / "history.jsonl").read_text().splitlines()
    ]
    assert rounds == [1, 2, 3]
    assert json.loads((run / "status.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("name", list(EVALUATE_CASES))
def test_evaluate_refuses_a_damaged_run_folder_with_one_line(finished, tmp_path, capsys, name):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damage, flags = EVALUATE_CASES[name]
    damage(run)
    _check_refused(run, ["evaluate", str(run), *flags], capsys)


def test_evaluate_and_resume_refuse_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for command in ("resume", "evaluate"):
        _check_refused(tmp_path / "empty", [command, str(tmp_path / "empty")], capsys)
    assert _snapshot(tmp_path / "empty") == {}
