"""Robust aggregation under attack: final test accuracy for each attack x aggregator.

Workload (issue "Robust aggregation"): IID MNIST, the 2NN, 50 clients who all take
part in every round, 20% of them malicious (chosen with the seed), one local epoch,
batch size 10. Every cell is a fresh federation from the same seed, so the table
compares the rules on identical data, clients and initial model.

Usage: ``python bench/robustness.py --data-dir ../shared/data/mnist [--rounds 20]``
"""

from __future__ import annotations

import argparse
import time

import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.builtin.datasets import MNISTSource
from privfl.data.partition import iid
from privfl.testing import make_plugin_manager

ATTACKS = ("none", "label-flip", "sign-flip", "gaussian", "alie")
AGGREGATORS = ("fedavg", "trimmed-mean", "median", "krum", "multi-krum")


def run_cell(train, test, partition, attack: str, aggregator: str, args) -> float:
    torch.manual_seed(0)
    fed = privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=partition,
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler="all",
        aggregator=aggregator,
        attack=None if attack == "none" else attack,
        malicious_fraction=args.malicious_fraction,
        options={
            "trimmed-mean": {"trim_fraction": args.malicious_fraction},
            "krum": {"byzantine": args.byzantine},
            "multi-krum": {"byzantine": args.byzantine},
            "gaussian": {"sigma": args.sigma},
        },
        eval_every=args.rounds,
        plugins=make_plugin_manager(),
    )
    return fed.run(args.rounds)[-1].metrics["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--malicious-fraction", type=float, default=0.2)
    parser.add_argument("--byzantine", type=int, default=10, help="f for krum / multi-krum")
    parser.add_argument("--sigma", type=float, default=10.0, help="gaussian attack std")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS))
    args = parser.parse_args()
    data = MNISTSource(args.data_dir).load()
    train = data.train
    test = data.test
    partition = iid(len(train), args.clients, seed=0)
    print(
        f"2NN, {args.clients} IID clients all per round, {args.malicious_fraction:.0%} malicious, "
        f"{args.rounds} rounds, test set of {len(test)}; final test accuracy"
    )
    print(f"{'attack':<12}" + "".join(f"{a:>14}" for a in args.aggregators) + f"{'seconds':>10}")
    for attack in args.attacks:
        started = time.perf_counter()
        cells = [run_cell(train, test, partition, attack, a, args) for a in args.aggregators]
        row = "".join(f"{c:>14.4f}" for c in cells)
        print(f"{attack:<12}{row}{time.perf_counter() - started:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
