"""Client-level DP on real MNIST: test accuracy against epsilon for several noise levels.

Workload (issue "Client-level differential privacy"): the 2NN, 1,000 IID clients,
Poisson sampling at rate 0.1 (about 100 clients per round), DP-FedAvg with clip norm
C and noise multiplier z, accounted at delta 1e-5. For every z the run stops before
the round that would take epsilon above ``--target-epsilon`` (at most
``--max-rounds``); the row without noise runs as many rounds as the longest DP row,
with the same clipping and the same fixed denominator, so the table shows what the
noise costs.

Usage: ``python bench/dp_tradeoff.py --data-dir ../shared/data/mnist``
"""

from __future__ import annotations

import argparse
import time

import torch

import privfl
from privfl.algorithms.dp import clip_to_norm
from privfl.algorithms.models import TwoNN
from privfl.builtin.datasets import MNISTSource
from privfl.data.partition import iid
from privfl.testing import make_plugin_manager


def run(train, test, partition, noise: float | None, rounds: int, args) -> tuple[float, float, int]:
    """Return (final accuracy, epsilon, rounds run) of one federation."""
    torch.manual_seed(0)
    dp_options = {
        "clip": args.clip,
        "noise_multiplier": noise if noise is not None else 1.0,
        "delta": args.delta,
        "target_epsilon": args.target_epsilon if noise is not None else None,
        "accountant": args.accountant,
        "secure_noise": True,
    }
    fed = privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=partition,
        training=privfl.LocalTraining(epochs=args.epochs, batch_size=10, lr=args.lr),
        sampler="poisson",
        server_optimizer=args.server_opt,
        mechanisms=["dp"] if noise is not None else [NoiselessDP(**dp_options)],
        options={
            "poisson": {"sample_rate": args.sample_rate},
            "dp": dp_options,
            args.server_opt: {"server_lr": args.server_lr},
        },
        eval_every=rounds,
        plugins=make_plugin_manager(),
    )
    records = fed.run(rounds)
    accuracy = fed.evaluate()["accuracy"]
    epsilon = records[-1].values["epsilon"] if noise is not None else float("inf")
    return accuracy, epsilon, len(records)


class NoiselessDP(privfl.PrivacyMechanism):
    """DP-FedAvg's clipping and fixed denominator without noise: the non-private baseline."""

    name = "clip-only"
    fixed_denominator = True

    def __init__(self, *, clip: float, **_: object) -> None:
        self.clip = clip

    def client_step(self, update, *, config, generator, statistics):
        return clip_to_norm(update, self.clip)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.8, 1.0, 1.2])
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--server-opt", default="sgd")
    parser.add_argument("--server-lr", type=float, default=2.0)
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--accountant", default="rdp")
    parser.add_argument("--max-rounds", type=int, default=200)
    args = parser.parse_args()
    data = MNISTSource(args.data_dir).load()
    train = data.train
    test = data.test
    partition = iid(len(train), args.clients, seed=0)
    print(
        f"2NN, {args.clients} IID clients, Poisson rate {args.sample_rate}, clip {args.clip}, "
        f"{args.epochs} local epochs, server {args.server_opt} lr {args.server_lr}, "
        f"accountant {args.accountant}, delta {args.delta:g}, test set of {len(test)}"
    )
    print(f"{'noise z':>8}{'rounds':>8}{'epsilon':>10}{'accuracy':>10}{'seconds':>9}")
    longest = 0
    for noise in args.noise:
        started = time.perf_counter()
        accuracy, epsilon, rounds = run(train, test, partition, noise, args.max_rounds, args)
        longest = max(longest, rounds)
        seconds = time.perf_counter() - started
        print(f"{noise:>8.2f}{rounds:>8d}{epsilon:>10.3f}{accuracy:>10.4f}{seconds:>9.0f}")
    started = time.perf_counter()
    accuracy, _, rounds = run(train, test, partition, None, longest, args)
    seconds = time.perf_counter() - started
    print(f"{'none':>8}{rounds:>8d}{'inf':>10}{accuracy:>10.4f}{seconds:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
