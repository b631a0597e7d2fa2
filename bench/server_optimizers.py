"""Rounds to the 2NN's 95.5% IID target for each server optimizer, on the same seed.

Workload (McMahan et al. 2017; Reddi et al. 2021): MNIST, the 2NN, 100 IID clients,
10 per round, one local epoch, batch size 10, client learning rate 0.1. For each
server optimizer and each server learning rate given, the federation is evaluated
after every round and the first round at or above the target is printed (or "-"
if it is not reached within ``--rounds``).

Usage: ``python bench/server_optimizers.py --data-dir ../shared/data/mnist``
"""

from __future__ import annotations

import argparse

import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.builtin.datasets import MNISTSource
from privfl.data.partition import iid
from privfl.testing import make_plugin_manager

GRID = {
    "sgd": [1.0],
    "fedavgm": [1.0, 0.3],
    "fedadam": [0.01, 0.003, 0.001],
    "fedyogi": [0.01, 0.003, 0.001],
    "fedadagrad": [0.03, 0.01],
}


def rounds_to_target(
    train, test, optimizer: str, server_lr: float, args
) -> tuple[int | None, float]:
    torch.manual_seed(0)
    fed = privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=iid(len(train), 100, seed=0),
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
        server_optimizer=optimizer,
        options={"uniform": {"clients_per_round": 10}, optimizer: {"server_lr": server_lr}},
        plugins=make_plugin_manager(),
    )
    best = 0.0
    for number in range(1, args.rounds + 1):
        (record,) = fed.run(number)
        best = max(best, record.metrics["accuracy"])
        if record.metrics["accuracy"] >= args.target:
            return number, best
    return None, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.955)
    parser.add_argument("--optimizers", nargs="+", default=list(GRID))
    args = parser.parse_args()
    data = MNISTSource(args.data_dir).load()
    train = data.train
    test = data.test
    print(f"rounds to {args.target:.1%} test accuracy (2NN, IID, 100 clients, 10 per round)")
    print(f"{'optimizer':<12}{'server lr':>10}{'rounds':>8}{'best acc':>10}")
    for optimizer in args.optimizers:
        for server_lr in GRID[optimizer]:
            rounds, best = rounds_to_target(train, test, optimizer, server_lr, args)
            shown = str(rounds) if rounds is not None else "-"
            print(f"{optimizer:<12}{server_lr:>10g}{shown:>8}{best:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
