"""Test MSE of record-level DP-SGD at epsilon <= 3 per owner against non-private FedAvg.

Alice and Bob hold the bundled diabetes table (dataset ``diabetes``, two owners, 20%
of each owner's rows held out). Both runs train the same MLP from the same start for
``--rounds`` rounds, both owners each round; the private run's owners train with
DP-SGD, its noise multiplier the smallest that keeps each owner's epsilon at most
``--epsilon`` (delta ``--delta``) after the last round (Opacus' ``get_noise_multiplier``
for the owner's sampling rate and steps). Prints both test MSEs (the target is
standardised: an MSE of 1 is predicting the mean), each owner's final epsilon and
the load average.

Usage: ``python plugins/privfl-opacus/bench/record_level_dp.py [--rounds 20] [--epsilon 3]``
"""

from __future__ import annotations

import argparse
import math
import os

import privfl_opacus
import torch
from opacus.accountants.utils import get_noise_multiplier
from privfl_opacus import DPSGD

import privfl
from privfl.algorithms.tabular_models import MLP
from privfl.builtin.datasets import DiabetesSource
from privfl.testing import make_plugin_manager


def run(data, args, trainer) -> privfl.Federation:
    torch.manual_seed(args.seed)
    fed = privfl.Federation(
        model=MLP(10, [64]),
        client_data=data.client_data,
        test=data.test,
        training=privfl.LocalTraining(batch_size=args.batch_size, lr=args.lr),
        sampler="all",
        executor="serial",
        trainer=trainer,
        plugins=make_plugin_manager([privfl_opacus]),
    )
    fed.run(args.rounds)
    return fed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = DiabetesSource().load()
    rows = min(len(data.client_data.load(k)) for k in range(data.client_data.num_clients))
    batches = math.ceil(rows / args.batch_size)
    sigma = get_noise_multiplier(
        target_epsilon=args.epsilon,
        target_delta=args.delta,
        sample_rate=1 / batches,
        steps=args.rounds * batches,
        accountant="rdp",
    )
    plain = run(data, args, None)
    private = run(
        data, args, DPSGD(noise_multiplier=sigma, max_grad_norm=args.clip, delta=args.delta)
    )
    final = private.history[-1]
    print(f"data: {data.source}")
    print(f"{args.rounds} rounds, lr {args.lr}, batch {args.batch_size}, clip {args.clip}")
    print(f"non-private test MSE {plain.history[-1].metrics['mse']:.4f}")
    print(
        f"DP-SGD test MSE      {final.metrics['mse']:.4f} (noise multiplier {sigma:.3f}; "
        f"owners' epsilon {final.values['owner_epsilon']}, delta {args.delta:g})"
    )
    print("load average: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
