"""privfl at scale: 10,000 clients, 100 per round, against the floor's same sample-steps.

Workload: the 2NN on MNIST split among 10,000 clients (IID, and Dirichlet(0.5) label
skew), 100 clients per round, one local epoch, batch size 10, ``--rounds`` rounds
(default 100) with the default executor and no evaluation. For each partition it prints:

* start-up: seconds to build the federation (partition, client data, model), and to
  the end of round 1;
* per round: the median round time against the floor doing the same number of
  batch-10 SGD steps in a plain loop (:mod:`centralized_floor`, one thread and all
  threads, the faster), measured in the same process, every tenth round;
* memory: the process's resident set (RSS, from ``/proc/self/status``) after round 10
  and after the last round, and their ratio (the goal: within 5%); the floor runs once
  before round 1, so that its own allocations are in both readings.

Usage: ``python bench/scale.py --data-dir ../shared/data/mnist``
"""

from __future__ import annotations

import os

# Both sides get what `privfl run` gets (privfl sets these when imported before torch):
# idle OpenMP threads spin briefly, then sleep; large tensors use huge pages.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from privfl import Federation, LocalTraining
from privfl.builtin.samplers import UniformSampler
from privfl.data.partition import dirichlet, iid
from privfl.testing import make_plugin_manager

sys.path.insert(0, str(Path(__file__).parent))
from centralized_floor import MODELS, load, train_steps

CLIENTS = 10_000
PER_ROUND = 100


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def floor_seconds(train, steps: int, seed: int) -> float:
    """The faster of one thread and all threads doing ``steps`` batch-10 SGD steps."""
    model = MODELS["2nn"]()
    best = math.inf
    threads = torch.get_num_threads()
    for count in (1, threads):
        torch.set_num_threads(count)
        started = time.perf_counter()
        train_steps(model, train, steps, 10, 0.1, seed=seed)
        best = min(best, time.perf_counter() - started)
    torch.set_num_threads(threads)
    return best


def run(name: str, train, rounds: int) -> None:
    started = time.perf_counter()
    if name == "iid":
        partition = iid(len(train), CLIENTS, seed=0)
    else:
        partition = dirichlet(train.targets.numpy(), CLIENTS, alpha=0.5, seed=0)
    sizes = [len(p) for p in partition]
    torch.manual_seed(0)
    fed = Federation(
        model=MODELS["2nn"](),
        train=train,
        partition=partition,
        training=LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler=UniformSampler(clients_per_round=PER_ROUND),
        evaluators=(),
        plugins=make_plugin_manager(),
    )
    built = time.perf_counter() - started
    floor_seconds(train, 100, seed=0)  # so the floor's own memory is in every RSS reading
    round_started = time.perf_counter()
    fed.run(1)
    first = built + time.perf_counter() - round_started
    ratios, privfl_times, floor_times = [], [], []
    memory = {}
    for number in range(2, rounds + 1):
        (record,) = fed.run(number)
        if number == 10:
            memory[10] = rss_mib()
        if number % 10 == 0:
            steps = sum(math.ceil(sizes[c] / 10) for c in record.clients)
            floor = floor_seconds(train, steps, seed=number)
            privfl_times.append(record.seconds)
            floor_times.append(floor)
            ratios.append(record.seconds / floor)
    memory[rounds] = rss_mib()
    print(
        f"{name:<10} start-up {built:6.2f} s, to end of round 1 {first:6.2f} s; "
        f"round {statistics.median(privfl_times):.3f} s vs floor "
        f"{statistics.median(floor_times):.3f} s: ratio {statistics.median(ratios):.3f}; "
        f"RSS round 10 {memory[10]:.0f} MiB, round {rounds} {memory[rounds]:.0f} MiB "
        f"({memory[rounds] / memory[10]:.3f}x); load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--partitions", nargs="+", default=["iid", "dirichlet"])
    args = parser.parse_args()
    if args.rounds < 10:
        parser.error("--rounds must be at least 10 (memory is compared to round 10)")
    train, _ = load(args.data_dir)
    print(
        f"torch {torch.__version__}, {CLIENTS} clients, {PER_ROUND} per round, data "
        f"{args.data_dir or 'bundled sample'} ({len(train)} examples), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for name in args.partitions:
        run(name, train, args.rounds)


if __name__ == "__main__":
    main()
