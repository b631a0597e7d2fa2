"""Runs that cannot be lost or corrupted: kills at chosen points, locks, refused resumes.

Kills are deterministic: a test plugin, installed through an entry point in a folder on
``PYTHONPATH``, blocks a run at a chosen round, before or after that round's files are
written, and says so in a marker file; the test then sends SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from privfl.app.checkpoint import load_checkpoint, save_checkpoint
from privfl.cli.main import main

FLAGS = ["--model", "2nn", "--clients", "20", "--clients-per-round", "10", "--rounds", "12"]

BLOCKER = '''
"""Blocks a run at round PRIVFL_TEST_BLOCK_ROUND, before or after its files are written."""
import os
import time
from pathlib import Path

from privfl import hookimpl


def _block(record):
    if record.round == int(os.environ.get("PRIVFL_TEST_BLOCK_ROUND", "0")):
        Path(os.environ["PRIVFL_TEST_BLOCK_MARKER"]).write_text(str(record.round))
        time.sleep(600)


@hookimpl(wrapper=True)
def privfl_round_finish(federation, record):
    if os.environ.get("PRIVFL_TEST_BLOCK_WHEN") == "before-writes":
        _block(record)
    result = yield
    if os.environ.get("PRIVFL_TEST_BLOCK_WHEN") == "after-writes":
        _block(record)
    return result
'''


@pytest.fixture(scope="module")
def blocker_path(tmp_path_factory) -> Path:
    """A folder holding the blocker module and the metadata of its entry point."""
    root = tmp_path_factory.mktemp("blocker")
    (root / "privfl_test_blocker.py").write_text(BLOCKER)
    info = root / "privfl_test_blocker-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: privfl-test-blocker\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[privfl]\nblocker = privfl_test_blocker\n")
    return root


def _env(blocker_path: Path, **block: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVFL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker_path), env.get("PYTHONPATH")]))
    env.update(block)
    return env


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "privfl.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_at(tmp_path: Path, blocker_path: Path, run: str, round: int, when: str, *extra: str):
    marker = tmp_path / f"{run}.blocked"
    env = _env(
        blocker_path,
        PRIVFL_TEST_BLOCK_ROUND=str(round),
        PRIVFL_TEST_BLOCK_WHEN=when,
        PRIVFL_TEST_BLOCK_MARKER=str(marker),
    )
    process = _cli("run", *FLAGS, *extra, "--run-dir", run, cwd=tmp_path, env=env)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), process.communicate()
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def straight(tmp_path_factory, blocker_path) -> Path:
    """An uninterrupted run of FLAGS (the blocker loaded, but idle)."""
    cwd = tmp_path_factory.mktemp("straight")
    process = _cli("run", *FLAGS, "--run-dir", "run", cwd=cwd, env=_env(blocker_path))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return cwd / "run"


@pytest.mark.parametrize("when", ["before-writes", "after-writes"])
@pytest.mark.parametrize(
    ("round", "executor"),
    [(1, ["vectorized"]), (7, ["vectorized"]), (12, ["process", "--vectorize"])],
    ids=["1-vectorized", "7-vectorized", "12-process"],
)
def test_a_kill_at_any_round_and_write_then_resume_ends_with_the_same_bytes(
    tmp_path, blocker_path, straight, round, executor, when
):
    # The straight run uses the default executor, vectorized: the process executor's
    # workers stack their clients the same way and give the same bytes.
    _kill_at(tmp_path, blocker_path, "killed", round, when, "--executor", *executor)
    killed = tmp_path / "killed"
    status = json.loads((killed / "status.json").read_text())
    assert status["status"] == "running"
    assert not (killed / "model.safetensors").exists()
    resumed = _cli("resume", "killed", cwd=tmp_path, env=_env(blocker_path))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out + err
    for name in ("model.safetensors", "checkpoint.safetensors"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    rounds = [
        json.loads(line)["round"] for line in (killed / "history.jsonl").read_text().splitlines()
    ]
    assert rounds == list(range(1, 13))
    assert json.loads((killed / "status.json").read_text())["status"] == "complete"


def test_a_second_process_on_a_running_folder_is_refused(tmp_path, blocker_path):
    marker = tmp_path / "blocked"
    env = _env(
        blocker_path,
        PRIVFL_TEST_BLOCK_ROUND="3",
        PRIVFL_TEST_BLOCK_WHEN="after-writes",
        PRIVFL_TEST_BLOCK_MARKER=str(marker),
    )
    first = _cli("run", *FLAGS, "--run-dir", "run", cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists()
        second = _cli("resume", "run", cwd=tmp_path, env=_env(blocker_path))
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 2
        assert f"no other privfl process is using (process {first.pid} is)" in " ".join(out.split())
        history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["round"] for line in history] == [1, 2, 3]
    finally:
        first.kill()
        first.communicate(timeout=60)


def _finished_run(tmp_path: Path, rounds: int = 2) -> Path:
    run_dir = tmp_path / "run"
    flags = [*FLAGS[:-1], str(rounds)]
    assert main(["run", *flags, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _raise_rounds(run_dir: Path, rounds: int, **edits: str) -> None:
    config = run_dir / "config.toml"
    text = config.read_text().replace("rounds = 2", f"rounds = {rounds}")
    for key, value in edits.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        text = "\n".join([f"{key} = {value}", *lines]) + "\n"
    config.write_text(text)


@pytest.mark.parametrize(("key", "value"), [("lr", "0.2"), ("seed", "5"), ("epochs", "2")])
def test_resume_refuses_a_config_edited_beyond_rounds(tmp_path, capsys, key, value):
    run_dir = _finished_run(tmp_path)
    _raise_rounds(run_dir, 4, **{key: value})
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    assert f"made with other {key}" in " ".join(capsys.readouterr().out.split())


def test_resume_refuses_a_checkpoint_with_nan_parameters(tmp_path, capsys):
    run_dir = _finished_run(tmp_path)
    state = load_checkpoint(run_dir / "checkpoint.safetensors")
    state["params"] = torch.full_like(state["params"], float("nan"))
    save_checkpoint(run_dir / "checkpoint.safetensors", state)
    _raise_rounds(run_dir, 4)
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    assert "NaN or infinite parameters" in capsys.readouterr().out


def test_resume_refuses_a_missing_checkpoint_instead_of_starting_over(tmp_path, capsys):
    run_dir = _finished_run(tmp_path)
    (run_dir / "checkpoint.safetensors").unlink()
    _raise_rounds(run_dir, 4)
    history = (run_dir / "history.jsonl").read_text()
    capsys.readouterr()
    assert main(["resume", str(run_dir)]) == 2
    assert "checkpoint is missing" in " ".join(capsys.readouterr().out.split())
    assert (run_dir / "history.jsonl").read_text() == history


def test_a_run_killed_before_its_model_was_written_resumes_to_it(tmp_path, capsys):
    run_dir = _finished_run(tmp_path)
    model = (run_dir / "model.safetensors").read_bytes()
    (run_dir / "model.safetensors").unlink()
    (run_dir / ".model.safetensors.abc.tmp").write_bytes(b"half a file")
    assert main(["resume", str(run_dir)]) == 0
    assert (run_dir / "model.safetensors").read_bytes() == model
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
