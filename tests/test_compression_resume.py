"""Error feedback's residuals are client state that checkpoints carry: a run killed with
SIGKILL and resumed ends with the same bytes as one that ran straight through.

The kills use the blocker plugin of ``test_run_folder`` (a hook that blocks the run at
a chosen round, before or after its files are written).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_run_folder import _cli, _env, _kill_at, blocker_path  # noqa: F401 (a fixture)

from privfl.app.checkpoint import load_checkpoint
from privfl.builtin.samplers import UniformSampler
from privfl.testing import tiny_federation

COMPRESSION = ["--compressor", "topk", "--compress-fraction", "0.05", "--checkpoint-every", "4"]


SETTINGS = {
    "topk": ("topk", {"topk": {"fraction": 0.2}}),
    "stack": (["topk", "qsgd"], {"topk": {"fraction": 0.3}, "qsgd": {"bits": 3}}),
}
"""A sparsifier alone, and stacked before a quantizer (whose rounding the residual
carries too)."""


def _federation(setting: str):
    compressor, options = SETTINGS[setting]
    return tiny_federation(
        num_clients=6,
        compressor=compressor,
        options=options,
        sampler=UniformSampler(clients_per_round=2),
    )


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_residuals_are_checkpointed_and_restored_to_the_bit(tmp_path, setting):
    straight = _federation(setting)
    straight.run(6)
    first = _federation(setting)
    first.run(3, run_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    saved = state["components"]["client_states"]
    assert sorted(saved) == [f"{c}.residual" for c in sorted(first.client_states._tables)]
    resumed = _federation(setting)
    resumed.load_state_dict(state)
    resumed.run(6)
    assert torch.equal(resumed.params, straight.params)
    assert resumed.client_states.state_dict().keys() == straight.client_states.state_dict().keys()
    for key, residual in straight.client_states.state_dict().items():
        assert torch.equal(resumed.client_states.state_dict()[key], residual), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory, blocker_path) -> object:  # noqa: F811
    cwd = tmp_path_factory.mktemp("straight")
    process = _cli("run", *FLAGS, *COMPRESSION, "--run-dir", "run", cwd=cwd, env=_env(blocker_path))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return cwd / "run"


FLAGS = ["--model", "2nn", "--clients", "20", "--clients-per-round", "5", "--rounds", "9"]


@pytest.mark.parametrize("when", ["before-writes", "after-writes"])
def test_a_run_with_error_feedback_killed_and_resumed_ends_with_the_same_bytes(
    tmp_path,
    blocker_path,  # noqa: F811
    straight,
    when,
    monkeypatch,
):
    # Killed at round 6: the last checkpoint is round 4's, so rounds 5 and 6 run again
    # from the residuals clients had after round 4.
    monkeypatch.setattr("test_run_folder.FLAGS", FLAGS)
    _kill_at(tmp_path, blocker_path, "killed", 6, when, *COMPRESSION)
    resumed = _cli("resume", "killed", cwd=tmp_path, env=_env(blocker_path))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out + err
    killed = tmp_path / "killed"
    for name in ("model.safetensors", "checkpoint.safetensors"):
        assert (killed / name).read_bytes() == (straight / name).read_bytes(), name
    history = [json.loads(line) for line in (killed / "history.jsonl").read_text().splitlines()]
    assert [r["round"] for r in history] == list(range(1, 10))
    states = load_checkpoint(killed / "checkpoint.safetensors")["components"]["client_states"]
    took_part = {client for record in history for client in record["clients"]}
    assert sorted(states) == sorted(f"{client}.residual" for client in took_part)
    assert all(r["uplink_bytes"] < 0.1 * 4 * 199_210 for r in history)
