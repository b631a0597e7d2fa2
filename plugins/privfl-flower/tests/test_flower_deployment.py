"""privfl on a real Flower deployment: SuperLink and SuperNodes as processes on 127.0.0.1.

The runs use the tests' Flower app (tests/flower_app: the 2NN on 600 MNIST digits)
with ``flwr run`` on the module's federation of three SuperNodes (TLS, registered
node keys), each the owner of two of the six clients, and compare the model and
history that privfl writes with privfl's in-process run of the same app, data and
seed (``serial`` executor, one torch thread, as a node's host trains). The test
that stops a node runs last: it leaves the federation with two nodes.
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
from stop_clients import StopClients

from privfl.builtin.executors import SerialExecutor
from privfl.client_data import FolderData
from privfl.components import Executor

sys.path.insert(0, str(Path(__file__).parent / "flower_app"))
from privfl_flower_testapp.task import NUM_CLIENTS, build

RUN_SECONDS = 480
"""Each test's runs took about 140 s on a 2-core machine under a load average of 10 to
15 (a SuperNode looks for work every 3 seconds and starts a process per message);
this bounds a stuck run."""


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


def _in_process(
    federation, rounds: int, executor: Executor | None = None, **config
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The model and history of the app's federation run in this process."""
    fed = build(
        client_data=FolderData(federation.all_data, NUM_CLIENTS),
        executor=executor or SerialExecutor(threads=1),
        run_config=config,
    )
    with fed:
        fed.run(rounds)
    model = {k: v.detach() for k, v in fed.global_model().state_dict().items()}
    return model, [_comparable(r.to_json()) for r in fed.history]


def _equal(on_flower: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> bool:
    return on_flower.keys() == model.keys() and all(
        torch.equal(on_flower[name], model[name]) for name in model
    )


RUNS = {
    "fedavg": {},
    "trimmed-mean": {"aggregator": "trimmed-mean"},
    "dp-fedavg": {"mechanisms": "dp"},
}
"""Runs without dropouts: FedAvg, a robust aggregator, and DP-FedAvg (central noise)."""


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_flower_runs_write_the_models_and_histories_of_the_in_process_runs(federation, tmp_path):
    """The three runs go to the SuperLink at once (Flower runs them side by side, and
    each node answers each run from a host of its own), which takes a third of the
    time of one after the other: a run mostly waits for its nodes' next poll."""
    started = {}
    for name, config in RUNS.items():
        run_dir = tmp_path / f"run-{name}"
        started[name] = (run_dir, federation.flwr_run(run_dir, **config))
    for run_dir, run in started.values():
        _finish(run, federation, f"flwr-run-{run_dir.name}")
    for name, (run_dir, _) in started.items():
        model, history = _in_process(federation, 2, **RUNS[name])
        assert _equal(_model(run_dir), model), name
        assert _history(run_dir) == history, name
        assert [r["clients"] for r in history] == [list(range(NUM_CLIENTS))] * 2, name
        assert not any("failed" in r for r in history), name
    assert _history(started["dp-fedavg"][0])[-1]["epsilon"] > 0


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


DP_SECAGG = {"mechanisms": "dp,secagg+", "dp-mode": "distributed"}
"""``privfl run --model 2nn --dp --dp-mode distributed --secagg secagg+``."""


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_a_supernode_stopped_mid_round_is_dropped_and_the_run_equals_the_in_process_one(
    federation, tmp_path
):
    """Node 2 (clients 4 and 5) is stopped when the server asks it for its masked input
    in round 2 of 3. Its clients are dropped; SecAgg+ unmasks the sum of the other
    four (with their shares of the noise), round 3 runs on the two nodes left, and
    the model and history are those of the in-process run whose clients 4 and 5
    stop at the same phase of the same round."""
    run_dir = tmp_path / "run-dropout"
    stop = federation.data_dirs[2]
    run = federation.flwr_run(
        run_dir,
        **DP_SECAGG,
        **{"num-rounds": 3, "stop-dir": str(stop), "stop-round": 2, "stop-at": "masked_input"},
    )
    marker = stop / "reached-masked_input"
    deadline = time.monotonic() + RUN_SECONDS
    while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), federation.log(f"flwr-run-{run_dir.name}")[-4000:]
    federation.stop_node(2)
    _finish(run, federation, f"flwr-run-{run_dir.name}")
    history = _history(run_dir)
    assert [r["secagg_contributors"] for r in history] == [6, 4, 4]
    assert history[1]["secagg_dropped"] == {"masked_input": [4, 5]}
    assert history[2]["failed"] == {"4": "dropped", "5": "dropped"}
    assert history[-1]["epsilon"] > 0
    stopped = StopClients(SerialExecutor(threads=1), clients={4, 5}, round=2, phase="masked_input")
    model, in_process = _in_process(federation, 3, stopped, **DP_SECAGG)
    assert _equal(_model(run_dir), model)
    assert history == in_process
