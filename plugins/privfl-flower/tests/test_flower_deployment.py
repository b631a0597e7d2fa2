"""privfl on a real Flower deployment: SuperLink and SuperNodes as processes on 127.0.0.1.

The runs use the tests' Flower app (tests/flower_app) with ``flwr run`` on the
module's federation of three SuperNodes (TLS, registered node keys), each the owner
of two of the six clients, and compare the model and history that privfl writes
with privfl's in-process run of the same data and seed. The test that kills a node
runs last: it leaves the federation with two nodes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from privfl.testing import ClearSum, tiny_federation

sys.path.insert(0, str(Path(__file__).parent / "flower_app"))
from privfl_flower_testapp.task import OPTIONS

RUN_SECONDS = 480
"""Two rounds take about 1 minute on an idle 2-core machine (a SuperNode looks for
work every 3 seconds and starts a process per message); this bounds a stuck run."""


def _finish(run: subprocess.Popen, federation, name: str) -> None:
    try:
        run.wait(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        run.kill()
        run.wait()
        pytest.fail(f"flwr run took over {RUN_SECONDS} s:\n{federation.log(name)[-4000:]}")
    assert run.returncode == 0, federation.log(name)[-4000:]


def _history(run_dir: Path) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [_comparable(json.loads(line)) for line in lines]


def _comparable(record: dict) -> dict:
    """A history record less its wall-clock times."""
    return {k: v for k, v in record.items() if not k.endswith("seconds")}


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def _in_process(**settings) -> tuple[dict[str, torch.Tensor], list[dict]]:
    fed = tiny_federation(num_clients=6, executor="serial", options=OPTIONS, **settings)
    fed.run(2)
    model = {k: v.detach() for k, v in fed.global_model().state_dict().items()}
    return model, [_comparable(r.to_json()) for r in fed.history]


@pytest.mark.parametrize("mechanisms", ["", "dp,secagg+"], ids=["fedavg", "dp-distributed+secagg+"])
@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_a_flower_run_writes_the_model_and_history_of_the_in_process_run(
    federation, tmp_path, mechanisms
):
    run_dir = tmp_path / f"run-{mechanisms.replace(',', '-') or 'fedavg'}"
    run = federation.flwr_run(run_dir, mechanisms=mechanisms, timeout=120.0)
    _finish(run, federation, f"flwr-run-{run_dir.name}")
    model, history = _in_process(mechanisms=[m for m in mechanisms.split(",") if m])
    on_flower = _model(run_dir)
    assert all(torch.equal(on_flower[name], model[name]) for name in model)
    assert _history(run_dir) == history
    assert [r["clients"] for r in history] == [list(range(6))] * 2
    if mechanisms:  # every client's share of the noise, summed securely; epsilon reported
        assert [r["secagg_contributors"] for r in history] == [6, 6]
        assert history[-1]["epsilon"] > 0


def test_a_supernode_whose_key_was_not_registered_is_refused(federation):
    unregistered = f"node-{len(federation.data_dirs)}"  # made with the others, never registered
    process = federation.start_supernode(
        "stranger", unregistered, federation.data_dirs[0], "--max-retries", "0"
    )
    try:
        process.wait(timeout=120)
    finally:
        federation.kill(process)
    log = federation.log("stranger")
    assert process.returncode != 0, log
    assert "Failed to activate SuperNode" in log  # the SuperLink knows no such key
    assert "SuperNode ID" not in log


def test_a_node_killed_mid_round_is_dropped_and_the_secure_sum_recovered(federation, tmp_path):
    """Node 2 (clients 4 and 5) stops answering when asked for its masked input in
    round 1 and is then killed: SecAgg+ unmasks the sum of the other four clients,
    and round 2 runs on the two nodes left."""
    run_dir = tmp_path / "run-dropout"
    hang = federation.data_dirs[2]
    run = federation.flwr_run(
        run_dir,
        mechanisms="secagg+",
        timeout=45.0,
        **{"hang-dir": str(hang), "hang-at": "masked_input"},
    )
    marker = hang / "reached-masked_input"
    deadline = time.monotonic() + RUN_SECONDS
    while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), federation.log(f"flwr-run-{run_dir.name}")[-4000:]
    federation.kill_node(2)
    _finish(run, federation, f"flwr-run-{run_dir.name}")
    first, second = (
        json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()
    )
    assert first["secagg_dropped"] == {"masked_input": [4, 5]}
    assert first["secagg_contributors"] == 4
    assert second["secagg_contributors"] == 4
    # The sum is that of the four clients left, to SecAgg's fixed point.
    reference = tiny_federation(num_clients=6, mechanisms=[ClearSum(keep={0, 1, 2, 3})])
    reference.run(2)
    expected = reference.global_model().state_dict()
    on_flower = _model(run_dir)
    assert all(torch.allclose(on_flower[k], expected[k], atol=1e-5) for k in expected)
