"""Per-round cost of privacy accounting: privfl's accountants against recomposing each round.

A DP run asks its accountant, every round, to compose one more round and report
epsilon. Before privfl's ``pld`` accountant composed rounds incrementally, each round
recomposed the whole run in one dp-accounting call (``PLDAccountant.compose(event,
T)``, which rebuilds the one-round PLD and self-composes it T times). This prints,
side by side in one run, the mean milliseconds per round over rounds 1..T of:

- ``recompose``: that one-call recomposition with dp-accounting's ``PLDAccountant``;
- ``pld``: privfl's ``pld`` accountant (one-round PLD kept, rounds composed onto the
  PLD so far, a self-composition every 16 rounds);
- ``rdp``: privfl's ``rdp`` accountant (dp-accounting's RDP, one call per run);
- ``auto``: the default, which is ``pld`` or ``rdp`` (the column says which);

and the seconds a checkpoint's load takes after T rounds (``load pld``). The machine's
load average is printed with the figures: compare ratios within one run.

    python bench/accounting_speed.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.pld import PLDAccountant

from privfl.builtin.accountants import RdpPrivacyAccountant
from privfl.builtin.auto_accountant import AutoPrivacyAccountant
from privfl.builtin.pld_accountant import PldPrivacyAccountant
from privfl.components import Sampling

DELTA = 1e-5
SETTINGS = [  # (sampling, noise multiplier)
    (Sampling("poisson", 1000, rate=0.1), 1.0),
    (Sampling("poisson", 1000, rate=0.1), 0.5),
    (Sampling("poisson", 1000, rate=0.01), 1.0),
    (Sampling("all", 10), 2.0),
    (Sampling("fixed", 1000, size=100), 1.0),  # the uniform sampler: rdp only
]


def per_round_ms(step, rounds: int) -> float:
    """Mean milliseconds of ``step(t)`` over t = 1..rounds."""
    start = time.perf_counter()
    for t in range(1, rounds + 1):
        step(t)
    return (time.perf_counter() - start) / rounds * 1e3


def recompose_ms(sampling: Sampling, z: float, rounds: int) -> float:
    event = (
        PoissonSampledDpEvent(sampling.rate, GaussianDpEvent(z))
        if sampling.kind == "poisson"
        else GaussianDpEvent(z)
    )
    empty = PLDAccountant(value_discretization_interval=1e-3)

    def step(t: int) -> None:
        accountant = copy.deepcopy(empty)
        accountant.compose(event, t)
        accountant.get_epsilon(DELTA)

    return per_round_ms(step, rounds)


def accountant_ms(accountant, sampling: Sampling, z: float, rounds: int) -> float:
    def step(t: int) -> None:
        accountant.compose(sampling=sampling, noise_multiplier=z)
        accountant.epsilon(DELTA)

    return per_round_ms(step, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    rounds = parser.parse_args().rounds
    print(f"load average before: {os.getloadavg()}; ms per round over {rounds} rounds")
    print("setting                  recompose   pld   rdp   auto        load pld (s)")
    for sampling, z in SETTINGS:
        rate = {"poisson": sampling.rate, "fixed": (sampling.size or 0) / sampling.population}
        label = f"{sampling.kind} q={rate.get(sampling.kind, 1):g} z={z:g}"
        rdp = accountant_ms(RdpPrivacyAccountant(), sampling, z, rounds)
        auto = AutoPrivacyAccountant()
        chosen = accountant_ms(auto, sampling, z, rounds)
        method = auto.method.split(":")[0]
        if sampling.kind == "fixed":  # no PLD for sampling without replacement
            print(f"{label:24} {'-':>9} {'-':>5} {rdp:5.1f} {chosen:6.1f} ({method})")
            continue
        old = recompose_ms(sampling, z, rounds)
        pld = PldPrivacyAccountant()
        new = accountant_ms(pld, sampling, z, rounds)
        start = time.perf_counter()
        PldPrivacyAccountant().load_state_dict(pld.state_dict())
        load = time.perf_counter() - start
        print(
            f"{label:24} {old:9.1f} {new:5.1f} {rdp:5.1f} {chosen:6.1f} ({method})"
            f" {load:6.2f}   recompose/pld {old / new:.1f}x"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
