"""What a FedAvg round in privfl costs over the centralized floor, measured side by side.

Workload (McMahan et al. 2017's MNIST setting): 100 IID clients, 10 per round, one
local epoch, batch size 10, for the 2NN and the CNN. Two measurements, each printed
as a ratio of times taken in this one run:

* per round, for each executor asked for (``serial``: clients one at a time in this
  process; ``vectorized``: the round's clients stacked into one batched computation;
  ``process``: clients in worker processes, one per core, reached by message bytes;
  ``process+vectorize``: each worker's clients stacked): a privfl round (sampling,
  local training of 10 clients, aggregation, server update; no evaluation) against
  the floor doing the same number of batch-10 SGD steps in a plain loop
  (:mod:`centralized_floor`), alternating round by round; the floor is the faster of
  one thread and all threads, and, for ``--floor-threads 1``, one thread only (the
  "on one core" comparison);
* with ``--busy N``, the same per-round measurement while N busy-looping processes
  started by the bench compete for the cores (the floor then at one thread, which is
  its best under contention);
* whole run: ``privfl run`` for 20 rounds in a fresh process (start-up, data loading,
  checkpoints, final evaluation included) against ``centralized_floor.py`` doing the
  same total steps in a fresh process (start-up, data loading and final evaluation
  included), with peak memory (max RSS) of each.

Usage: ``python bench/fedavg_overhead.py --data-dir ../shared/data/mnist`` (add
``--cores 1`` for the one-core figures).
"""

from __future__ import annotations

import os

# Both sides get what `privfl run` gets (privfl sets these when imported before torch):
# idle OpenMP threads spin briefly, then sleep; large tensors use huge pages.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import contextlib
import json
import math
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from privfl import Federation, LocalTraining
from privfl.builtin.executors import SerialExecutor, VectorizedExecutor
from privfl.builtin.process_executor import ProcessExecutor
from privfl.builtin.samplers import UniformSampler
from privfl.data.partition import iid
from privfl.testing import make_plugin_manager

sys.path.insert(0, str(Path(__file__).parent))
from centralized_floor import MODELS, load, train_steps

HERE = Path(__file__).parent


def steps_of(partition_sizes: list[int], clients: list[int], batch_size: int) -> int:
    return sum(math.ceil(partition_sizes[c] / batch_size) for c in clients)


EXECUTORS = {
    "serial": SerialExecutor,
    "vectorized": VectorizedExecutor,
    "process": ProcessExecutor,
    "process+vectorize": lambda: ProcessExecutor(vectorize=True),
}


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """``processes`` busy-looping processes for the length of the block."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_spin, daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.join()


def per_round(
    model_name: str,
    data_dir: str | None,
    rounds: int,
    executor: str,
    floor_threads: tuple[int, ...],
) -> dict[str, float]:
    train, _ = load(data_dir)
    partition = iid(len(train), 100, seed=0)
    sizes = [len(p) for p in partition]
    torch.manual_seed(0)
    fed = Federation(
        model=MODELS[model_name](),
        train=train,
        partition=partition,
        training=LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler=UniformSampler(clients_per_round=10),
        evaluators=(),
        executor=EXECUTORS[executor](),
        plugins=make_plugin_manager(),
    )
    floor_model = MODELS[model_name]()
    all_threads = torch.get_num_threads()
    privfl_times, floor_times = [], []
    for number in range(1, rounds + 1):
        (record,) = fed.run(number)
        steps = steps_of(sizes, record.clients, 10)
        best = math.inf
        for threads in floor_threads:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            train_steps(floor_model, train, steps, 10, 0.1, seed=number)
            best = min(best, time.perf_counter() - started)
        torch.set_num_threads(all_threads)
        if number > 1:  # the first round of each warms caches up
            privfl_times.append(record.seconds)
            floor_times.append(best)
    fed.close()
    privfl_s, floor_s = statistics.median(privfl_times), statistics.median(floor_times)
    return {"privfl_s": privfl_s, "floor_s": floor_s, "ratio": privfl_s / floor_s}


def _timed(command: list[str], cwd: str) -> tuple[float, float, str]:
    """Run ``command``; return wall seconds, peak RSS in MiB and its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = proc.stdout.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{command} failed with {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024, out


def privfl_command(data_flags: list[str], model_name: str, rounds: int, run_dir: Path) -> list[str]:
    """``privfl run`` for the whole-run measurement: default executor, evaluation at the end."""
    return [
        sys.executable,
        *("-m", "privfl.cli.main", "run", *data_flags),
        *("--model", model_name, "--rounds", str(rounds), "--eval-every", str(rounds)),
        *("--run-dir", str(run_dir)),
    ]


def floor_command(data_flags: list[str], model_name: str, steps: int, threads: int) -> list[str]:
    """The floor's whole run: ``centralized_floor.py`` for ``steps`` steps in a fresh process."""
    return [
        sys.executable,
        str(HERE / "centralized_floor.py"),
        *data_flags,
        *("--model", model_name, "--steps", str(steps), "--threads", str(threads)),
    ]


def whole_run(model_name: str, data_dir: str | None, rounds: int, repeats: int) -> dict[str, float]:
    data_flags = ["--data-dir", str(Path(data_dir).resolve())] if data_dir else []
    privfl_runs, floor_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            run_dir = Path(tmp) / f"run{repeat}"
            privfl_runs.append(_timed(privfl_command(data_flags, model_name, rounds, run_dir), tmp))
            history = [
                json.loads(x) for x in (run_dir / "history.jsonl").read_text().split("\n") if x
            ]
            train, _ = load(data_dir)
            sizes = [len(p) for p in iid(len(train), 100, seed=0)]
            steps = sum(steps_of(sizes, r["clients"], 10) for r in history)
            floor = min(
                (
                    _timed(floor_command(data_flags, model_name, steps, t), tmp)
                    for t in (1, torch.get_num_threads())
                ),
                key=lambda run: run[0],
            )
            floor_runs.append(floor)
    privfl_s = statistics.median(r[0] for r in privfl_runs)
    floor_s = statistics.median(r[0] for r in floor_runs)
    privfl_mb = statistics.median(r[1] for r in privfl_runs)
    floor_mb = statistics.median(r[1] for r in floor_runs)
    return {
        "privfl_s": privfl_s,
        "floor_s": floor_s,
        "ratio": privfl_s / floor_s,
        "privfl_mib": privfl_mb,
        "floor_mib": floor_mb,
        "memory_ratio": privfl_mb / floor_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"], choices=sorted(MODELS))
    parser.add_argument("--rounds", type=int, default=12, help="rounds for the per-round ratio")
    parser.add_argument("--whole-rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="whole-run repetitions")
    parser.add_argument(
        "--executors",
        nargs="+",
        default=list(EXECUTORS),
        choices=list(EXECUTORS),
        help="executors whose rounds are timed (the whole run uses privfl run's default)",
    )
    parser.add_argument(
        "--busy", type=int, default=2, help="busy processes for the contention rows (0: none)"
    )
    parser.add_argument("--no-whole-run", action="store_true", help="time rounds only")
    parser.add_argument(
        "--cores",
        type=int,
        help="run everything (privfl, the floor, the busy processes) on this many cores, "
        "like `taskset`: --cores 1 gives issue 12's one-core figures",
    )
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    all_threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {all_threads} threads on cores "
        f"{sorted(os.sched_getaffinity(0))}, data "
        f"{args.data_dir or 'bundled sample'}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'model':<6}{'measure':<30}{'privfl s':>10}{'floor s':>10}{'ratio':>8}"
        f"{'privfl MiB':>12}{'floor MiB':>11}{'mem ratio':>11}"
    )

    def row(name: str, label: str, r: dict[str, float]) -> None:
        print(
            f"{name:<6}{label:<30}{r['privfl_s']:>10.3f}{r['floor_s']:>10.3f}{r['ratio']:>8.3f}"
            f"   (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )

    for name in args.models:
        for executor in args.executors:
            r = per_round(name, args.data_dir, args.rounds, executor, (1, all_threads))
            row(name, f"round {executor}", r)
            r = per_round(name, args.data_dir, args.rounds, executor, (1,))
            row(name, f"round {executor} vs 1-thread", r)
        if args.busy:
            with busy(args.busy):
                for executor in args.executors:
                    r = per_round(name, args.data_dir, args.rounds, executor, (1,))
                    row(name, f"round {executor}, {args.busy} busy", r)
        if args.no_whole_run:
            continue
        w = whole_run(name, args.data_dir, args.whole_rounds, args.repeats)
        print(
            f"{name:<6}{'whole run':<30}{w['privfl_s']:>10.2f}{w['floor_s']:>10.2f}"
            f"{w['ratio']:>8.3f}{w['privfl_mib']:>12.0f}{w['floor_mib']:>11.0f}"
            f"{w['memory_ratio']:>11.2f}   (load {os.getloadavg()[0]:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
