"""privfl's whole run against Flower 1.42's simulation and the centralized floor, side by side.

Workload (McMahan et al. 2017's MNIST 2NN setting): 100 IID clients, 10 per round, one
local epoch, batch size 10, learning rate 0.1, 20 rounds, evaluation once at the end.
Three programs run it, each in a fresh process, alternating, ``--repeats`` times:

* ``privfl run`` with its default executor (the command ``fedavg_overhead.py`` times);
* ``centralized_floor.py`` doing the same total SGD steps, at one thread and at all
  threads (the faster counts), as in ``fedavg_overhead.py``;
* ``flower_app.py`` under a separate venv's Python that has ``flwr[simulation]==1.42.0``
  (Ray 2.55): ``flwr.simulation.run_simulation`` with one CPU per client.

Time is the wall time until the program exits. Memory is the peak of the summed
resident memory of the program's whole process tree (Flower starts Ray's GCS server,
raylet, agents and one worker per core), sampled from ``/proc`` (no psutil in privfl's
venv): every process in the program's session or below it, every ``--interval``
seconds, until the last of them ends; the root's own max RSS from ``wait4`` bounds it
from below for spikes between samples. Summed RSS counts shared pages (the torch
libraries each Python maps) once per process, so the summed proportional set size
(PSS, shared pages split among their users) is also printed, sampled every
``--pss-every`` seconds because reading it costs about 15 ms a process.

Prints the medians, the ratios privfl/floor and privfl/Flower (issue 12's goals:
privfl <= 0.25x Flower's time and <= 0.3x its memory) and the load average.

Usage: ``python bench/versus_flower.py --flower-python /work/venvs/flower/bin/python
--data-dir ../shared/data/mnist``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from privfl.data.partition import iid

sys.path.insert(0, str(Path(__file__).parent))
from centralized_floor import load
from fedavg_overhead import HERE, floor_command, privfl_command, steps_of

ROUNDS = 20
LEFTOVER_GRACE_S = 15.0  # how long processes may outlive the program before they are ended


@dataclass
class Measured:
    """One program run: wall seconds, peak tree memory in MiB and what it printed."""

    seconds: float
    rss_mib: float
    pss_mib: float
    stdout: str
    leftovers_killed: int


def _tree(root: int) -> dict[int, int]:
    """RSS in bytes of each live process in ``root``'s session or descended from it.

    Read from ``/proc`` by hand because privfl's venv has no psutil: one read of
    ``/proc/PID/stat`` gives a process's parent, session and RSS.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    stats: dict[int, tuple[int, int, int]] = {}  # pid: (parent, session, rss)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:  # it ended while we looked
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[21]) * page)
    members = {pid for pid, (_, session, _) in stats.items() if session == root or pid == root}
    grown = True
    while grown:  # add processes that left the session but descend from a member
        grown = False
        for pid, (parent, _, _) in stats.items():
            if parent in members and pid not in members:
                members.add(pid)
                grown = True
    return {pid: stats[pid][2] for pid in members}


def _pss(pids: set[int]) -> int:
    """Summed proportional set size in bytes of ``pids`` (from smaps_rollup)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += next(int(x.split()[1]) for x in rollup if x.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            continue
    return total


class _PeakSampler:
    """Keeps the peak summed RSS and PSS of a process tree over repeated samples."""

    def __init__(self, root: int, pss_every: float) -> None:
        self.root, self.pss_every = root, pss_every
        self.rss = self.pss = 0
        self.next_pss = time.perf_counter()

    def sample(self) -> set[int]:
        """Take one sample; return the tree's live pids."""
        members = _tree(self.root)
        self.rss = max(self.rss, sum(members.values()))
        if self.pss_every > 0 and time.perf_counter() >= self.next_pss:
            self.pss = max(self.pss, _pss(set(members)))
            self.next_pss = time.perf_counter() + self.pss_every
        return set(members)


def measure(command: list[str], cwd: str, interval: float, pss_every: float) -> Measured:
    """Run ``command`` in a new session; time it and sample its process tree's memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        sampler = _PeakSampler(proc.pid, pss_every)
        while True:
            sampler.sample()
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(interval)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Ray's processes end shortly after the program: follow them, then end stragglers.
        deadline = time.perf_counter() + LEFTOVER_GRACE_S
        while (alive := sampler.sample()) and time.perf_counter() < deadline:
            time.sleep(interval)
        for pid in alive:  # ours: they run in the session this call started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode:
        raise RuntimeError(f"{command} failed with {proc.returncode}:\n{stderr[-3000:]}")
    mib = 1024 * 1024
    rss = max(sampler.rss, usage.ru_maxrss * 1024)  # the root's own peak bounds it from below
    return Measured(seconds, rss / mib, sampler.pss / mib, stdout, len(alive))


def flower_command(flower_python: str, data_flags: list[str]) -> list[str]:
    return [flower_python, str(HERE / "flower_app.py"), *data_flags, "--rounds", str(ROUNDS)]


@dataclass
class Outcome:
    """A measured run and what its program reported."""

    measured: Measured
    accuracy: float
    rounds: int | None  # None for the floor, which has no rounds


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(runs: dict[str, list[Outcome]]) -> None:
    """Print the medians of each program and privfl's ratios to the floor and to Flower."""
    med = {
        name: {
            "s": statistics.median(o.measured.seconds for o in outcomes),
            "rss": statistics.median(o.measured.rss_mib for o in outcomes),
            "pss": statistics.median(o.measured.pss_mib for o in outcomes),
            "accuracy": statistics.median(o.accuracy for o in outcomes),
        }
        for name, outcomes in runs.items()
    }
    print(f"\n{'run':<16}{'seconds':>9}{'RSS MiB':>9}{'PSS MiB':>9}{'accuracy':>10}{'rounds':>8}")
    for name, row in med.items():
        rounds = {str(o.rounds) if o.rounds is not None else "-" for o in runs[name]}
        print(
            f"{name:<16}{row['s']:>9.2f}{row['rss']:>9.0f}{row['pss']:>9.0f}"
            f"{row['accuracy']:>10.4f}{'/'.join(sorted(rounds)):>8}"
        )
    print(f"\n{'ratio':<16}{'time':>9}{'RSS':>9}{'PSS':>9}")
    goals = {"floor": "goal: time <= 0.9", "Flower": "goals: time <= 0.25, memory <= 0.3"}
    for other, goal in goals.items():
        p, o = med["privfl"], med[other]
        pss = f"{p['pss'] / o['pss']:>9.3f}" if p["pss"] and o["pss"] else f"{'-':>9}"
        print(
            f"{'privfl/' + other:<16}{p['s'] / o['s']:>9.3f}{p['rss'] / o['rss']:>9.3f}{pss}"
            f"   ({goal})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--flower-python", required=True, help="Python of a venv with flwr[simulation]==1.42.0"
    )
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.25, help="RSS sampling period (s)")
    parser.add_argument(
        "--pss-every", type=float, default=2.0, help="PSS sampling period (s); 0: off"
    )
    args = parser.parse_args()
    data_flags = ["--data-dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
    train, _ = load(args.data_dir)
    sizes = [len(p) for p in iid(len(train), 100, seed=0)]
    del train
    threads = torch.get_num_threads()
    print(
        f"2NN, 100 IID clients, 10 per round, E=1, B=10, lr 0.1, {ROUNDS} rounds, evaluation "
        f"at the end; {args.repeats} repeats, medians; torch {torch.__version__}, "
        f"{threads} threads, data {args.data_dir or 'bundled sample'}\n"
        f"memory: peak summed RSS of each process tree (/proc every {args.interval} s), "
        f"summed PSS every {args.pss_every} s\nload average before: {_load_average()}",
        flush=True,
    )
    runs: dict[str, list[Outcome]] = {"privfl": [], "floor": [], "Flower": []}

    def note(name: str, outcome: Outcome) -> None:
        runs[name].append(outcome)
        m = outcome.measured
        extra = f", {m.leftovers_killed} leftover processes ended" if m.leftovers_killed else ""
        print(
            f"  {name:<7}{m.seconds:8.2f} s {m.rss_mib:7.0f} MiB RSS {m.pss_mib:7.0f} MiB PSS  "
            f"accuracy {outcome.accuracy:.4f}  load {_load_average()}{extra}",
            flush=True,
        )

    def timed(command: list[str], cwd: str) -> Measured:
        return measure(command, cwd, args.interval, args.pss_every)

    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}", flush=True)
            run_dir = Path(tmp) / f"run{repeat}"
            m = timed(privfl_command(data_flags, "2nn", ROUNDS, run_dir), tmp)
            lines = (run_dir / "history.jsonl").read_text().splitlines()
            history = [json.loads(line) for line in lines if line]
            note("privfl", Outcome(m, history[-1]["accuracy"], len(history)))
            steps = sum(steps_of(sizes, r["clients"], 10) for r in history)
            floors = [timed(floor_command(data_flags, "2nn", steps, t), tmp) for t in {1, threads}]
            m = min(floors, key=lambda run: run.seconds)
            note("floor", Outcome(m, float(m.stdout.split()[1]), None))
            m = timed(flower_command(args.flower_python, data_flags), tmp)
            flower = json.loads(m.stdout.strip().splitlines()[-1])
            note("Flower", Outcome(m, flower["accuracy"], flower["rounds"]))
    report(runs)
    print(f"load average after: {_load_average()}")


if __name__ == "__main__":
    main()
