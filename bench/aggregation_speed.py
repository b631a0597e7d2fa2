"""What the robust aggregators cost over FedAvg, measured side by side in one run.

Workload: 100 random updates of the McMahan et al. 2017 MNIST CNN (1,663,370
parameters, float32), stacked as the ``[100, 1663370]`` tensor the round protocol
hands to the aggregator. Each rule runs ``--repeats`` times, interleaved with the
others so that a busy moment of the machine hits all of them alike; the best time of
each is printed with its ratio to FedAvg's best time, and the ratio of the median times
(less optimistic on a machine shared with other work).

Usage: ``python bench/aggregation_speed.py [--clients 100] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from privfl.algorithms import aggregation
from privfl.algorithms.models import CNN, count_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trim-fraction", type=float, default=0.1)
    parser.add_argument("--byzantine", type=int, default=10, help="f for krum / multi-krum")
    args = parser.parse_args()

    dim = count_parameters(CNN())
    generator = torch.Generator().manual_seed(0)
    updates = torch.randn(args.clients, dim, generator=generator)
    weights = torch.randint(300, 900, (args.clients,), generator=generator).float()
    rules = {
        "fedavg": lambda: aggregation.fedavg(updates, weights),
        f"trimmed-mean (beta {args.trim_fraction})": lambda: aggregation.trimmed_mean(
            updates, args.trim_fraction
        ),
        "median": lambda: aggregation.coordinate_median(updates),
        f"krum (f {args.byzantine})": lambda: aggregation.krum(updates, args.byzantine),
        f"multi-krum (f {args.byzantine}, m n-f)": lambda: aggregation.multi_krum(
            updates, args.byzantine
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in rules}
    for rule in rules.values():  # warm-up: thread pools, BLAS, page faults
        rule()
    for _ in range(args.repeats):
        for name, rule in rules.items():
            start = time.perf_counter()
            rule()
            times[name].append(time.perf_counter() - start)
    best = {name: min(seconds) for name, seconds in times.items()}
    median = {name: statistics.median(seconds) for name, seconds in times.items()}

    print(
        f"{args.clients} updates x {dim:,} parameters (float32), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'rule':<32} {'seconds':>9} {'x fedavg':>9} {'median x':>9}")
    for name, seconds in best.items():
        print(
            f"{name:<32} {seconds:>9.4f} {seconds / best['fedavg']:>9.2f} "
            f"{median[name] / median['fedavg']:>9.2f}"
        )


if __name__ == "__main__":
    main()
