"""What secure aggregation adds to a FedAvg round: SecAgg and SecAgg+ side by side.

Workload (McMahan et al. 2017's MNIST setting): 100 IID clients, one local epoch,
batch size 10, learning rate 0.1 (privfl's default local training), for the 2NN
(199,210 parameters) and the CNN (1,663,370), with 10, 50 and 100 clients per round.
Each round is first run as a plain FedAvg round by :class:`privfl.Federation` (sampling,
local training, aggregation, server update; no evaluation), timed as
``bench/fedavg_overhead.py`` does. A hook keeps the round's real client updates; each
is clamped to ``--bound`` and encoded with ``--frac-bits`` fractional bits into the
smallest ring (32 or 64 bits) whose sum cannot wrap, and the encoded updates are then
summed by :func:`privfl.secagg.secure_sum`, once with SecAgg (complete graph) and
once with SecAgg+ (Harary graph), both with parameters for ``--planned-dropout`` and
``--corruption``. ``--dropout`` makes that fraction of clients really drop out, each at
a random phase.

Columns: k and t (neighbours and threshold), the ring's bits, client CPU seconds (all
clients together, with encoding; and per client), server CPU seconds (with decoding),
MB each surviving client sends, the plain round's seconds, the secure sum's wall
seconds (clients, server and simulated network one after the other, as the serial
executor trains the clients), ratio = (plain round + secure sum) / plain round, both
in wall seconds, and the fraction of values clamped. Medians over the rounds after the
first (which warms caches up). Every secure sum is checked to equal the plain ring sum
of the survivors' encoded updates.

The secure sum runs on one core (numpy and OpenSSL), so local training runs on
``--threads 1`` by default: one core each, a per-core comparison. (On a busy machine
more torch threads can also be much slower than one, which would flatter the ratio.)

Usage: ``python bench/secagg.py --data-dir ../shared/data/mnist [--quick] [--dropout 0.05]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import privfl
from privfl.algorithms.models import CNN, TwoNN
from privfl.builtin.datasets import MNISTSource
from privfl.builtin.samplers import UniformSampler
from privfl.data.partition import iid
from privfl.secagg import (
    DropoutPlan,
    decode,
    encode,
    ring_bits_for,
    secagg_config,
    secure_sum,
)
from privfl.testing import make_plugin_manager

MODELS = {"2nn": TwoNN, "cnn": CNN}
VARIANTS = ("secagg", "secagg+")


class KeepUpdates:
    """Plugin that keeps each client's update as it reaches the server (no copies)."""

    def __init__(self) -> None:
        self.updates: dict[int, torch.Tensor] = {}

    @privfl.hookimpl
    def privfl_update_received(self, federation, round, result):
        self.updates[result.client_id] = result.update


def secure_round(updates, variant, round_number, args):
    """Encode, securely sum and decode one round's updates; return the costs."""
    ids = sorted(updates)
    n = len(ids)
    ring_bits = ring_bits_for(args.bound, args.frac_bits, n)
    config = secagg_config(
        ids,
        variant=variant,
        dropout_rate=args.planned_dropout,
        corruption_rate=args.corruption,
        ring_bits=ring_bits,
        seed=round_number,
    )
    plan = DropoutPlan.random(ids, args.dropout, seed=round_number)
    wall = time.perf_counter()
    cpu = time.thread_time()
    encoded, clamped = {}, 0
    for u in ids:
        encoded[u], count = encode(
            updates[u], frac_bits=args.frac_bits, bound=args.bound, dtype=config.dtype
        )
        clamped += count
    encode_s = time.thread_time() - cpu
    outcome = secure_sum(encoded, config, dropout=plan)
    cpu = time.thread_time()
    decode(outcome.total, frac_bits=args.frac_bits)
    decode_s = time.thread_time() - cpu
    wall = time.perf_counter() - wall
    expected = np.zeros_like(outcome.total)
    for u in outcome.survivors:
        expected += encoded[u]
    if not np.array_equal(outcome.total, expected):
        raise AssertionError(f"{variant}: the secure sum differs from the plain ring sum")
    degree = n - 1 if config.neighbours is None else len(next(iter(config.neighbours.values())))
    return {
        "k": degree,
        "t": config.threshold,
        "bits": ring_bits,
        "client_s": outcome.client_seconds + encode_s,
        "server_s": outcome.server_seconds + decode_s,
        "wall_s": wall,
        "mb_up": statistics.mean(outcome.bytes_sent[u] for u in outcome.survivors) / 1e6,
        "clamped": clamped / (n * encoded[ids[0]].size),
    }


def measure(model_name, clients_per_round, train, args):
    keep = KeepUpdates()
    torch.manual_seed(0)
    fed = privfl.Federation(
        model=MODELS[model_name](),
        train=train,
        partition=iid(len(train), 100, seed=0),
        training=privfl.LocalTraining(),
        sampler=UniformSampler(clients_per_round=clients_per_round),
        evaluators=(),
        plugins=make_plugin_manager([keep]),
    )
    plain_s: list[float] = []
    secure: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for number in range(1, args.rounds + 1):
        keep.updates.clear()
        (record,) = fed.run(number)
        if number == 1:  # warm-up
            continue
        plain_s.append(record.seconds)
        for variant in VARIANTS:
            secure[variant].append(secure_round(dict(keep.updates), variant, number, args))
    plain = statistics.median(plain_s)
    rows = []
    for variant, runs in secure.items():
        row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        row.update(variant=variant, plain_s=plain)
        row["ratio"] = (plain + row["wall_s"]) / plain
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    parser.add_argument("--clients", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell, first is warm-up")
    parser.add_argument("--dropout", type=float, default=0.0, help="fraction that really drops")
    parser.add_argument("--planned-dropout", type=float, default=0.1, help="delta for k and t")
    parser.add_argument("--corruption", type=float, default=0.1, help="gamma for k and t")
    parser.add_argument("--frac-bits", type=int, default=20)
    parser.add_argument("--bound", type=float, default=1.0, help="clamp |update| to this")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for local training (see above)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 clients per round, 2 rounds: a smoke run"
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds = [10], 2
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is a warm-up)")
    if args.dropout > args.planned_dropout:
        parser.error("--dropout above --planned-dropout would abort rounds")
    torch.set_num_threads(args.threads)
    data = MNISTSource(args.data_dir).load()
    train = data.train
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(train)} training "
        f"examples over 100 clients; planned dropout {args.planned_dropout}, corruption "
        f"{args.corruption}, real dropout {args.dropout}; {args.frac_bits} fractional bits, "
        f"bound {args.bound}; medians of {args.rounds - 1} rounds"
    )
    print(
        f"{'model':<5}{'n':>5} {'variant':<8}{'k':>4}{'t':>4}{'bits':>5}{'client s':>10}"
        f"{'per client':>11}{'server s':>10}{'MB up':>7}{'plain s':>9}{'secure s':>10}"
        f"{'ratio':>7}{'clamped':>9}"
    )
    for name in args.models:
        for n in args.clients:
            for r in measure(name, n, train, args):
                print(
                    f"{name:<5}{n:>5} {r['variant']:<8}{r['k']:>4.0f}{r['t']:>4.0f}"
                    f"{r['bits']:>5.0f}{r['client_s']:>10.3f}{r['client_s'] / n:>11.4f}"
                    f"{r['server_s']:>10.3f}{r['mb_up']:>7.2f}{r['plain_s']:>9.3f}"
                    f"{r['wall_s']:>10.3f}"
                    f"{r['ratio']:>7.2f}{r['clamped']:>9.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
