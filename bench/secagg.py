"""What secure aggregation adds to a FedAvg round, measured through privfl's mechanism.

Through the real mechanism (the default): the federation that ``privfl run`` builds
(:func:`privfl.app.runner.build_federation` of a :class:`~privfl.app.config.RunConfig`)
for MNIST, the 2NN (199,210 parameters), 100 IID clients, 100 of them per round, one
local epoch, batch size 10, learning rate 0.1, FedAvg, ``privfl run``'s executor (or
``--executor``) and no evaluation: once as is, once with ``--secagg secagg+`` at its
defaults. With ``dp`` in ``--settings`` both sides also run DP-FedAvg at its defaults,
whose clip norm bounds what clients send, so that secure aggregation can pick a 32-bit
ring. Both federations share the seed, so they train the same clients on the same
batches; their rounds alternate (plain, secure, plain, ...) and the medians of the
rounds after the first pair give ratio = secure round / plain round (wall seconds of
the round: sampling, training, secure sum, aggregation, server update), and the same
ratio of the process's CPU seconds, which a busy machine disturbs less. Columns: the
ring, the clamping bound, k and t, the protocol's seconds inside the secure round,
kilobytes each client sent, the values clamped over all rounds.

``--protocol`` also prints the earlier table: the rounds' real updates encoded and
summed by :func:`privfl.secagg.secure_sum` with SecAgg and SecAgg+ for the 2NN and the
CNN at 10, 50 and 100 clients per round, against the plain round, on one torch thread
(per-core costs, clients one after the other). ``--prg`` measures the keystream that
masks are expanded from: ChaCha20, AES-CTR and AES-128-GCM's counter mode (which
:mod:`privfl.secagg.primitives` uses), and the tag of a masked input: Poly1305 against
GMAC (it uses GMAC).

The load average is printed with every table: the machine may be shared.

Usage: ``python bench/secagg.py --data-dir ../shared/data/mnist [--rounds 7] [--prg]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

import privfl
from privfl.algorithms.models import CNN, TwoNN
from privfl.app.config import make_config
from privfl.app.runner import build_federation
from privfl.builtin.datasets import MNISTSource
from privfl.builtin.executors import SerialExecutor
from privfl.builtin.samplers import UniformSampler
from privfl.data.partition import iid
from privfl.secagg import (
    DropoutPlan,
    decode,
    encode,
    ring_bits_for,
    secagg_config,
    secagg_plus_parameters,
    secure_sum,
)
from privfl.testing import make_plugin_manager

MODELS = {"2nn": TwoNN, "cnn": CNN}
VARIANTS = ("secagg", "secagg+")
SETTINGS = {"defaults": (), "dp": ("dp",)}
"""Mechanisms on both sides of a comparison; the secure side adds secagg+."""


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- Through the mechanism ------------------------------------------------------------


def federation(mechanisms: tuple[str, ...], args: argparse.Namespace) -> privfl.Federation:
    """The federation of ``privfl run --model 2nn --clients-per-round N [--dp] ...``."""
    tables = {"uniform": {"clients_per_round": args.clients_per_round}}
    if args.data_dir:
        tables["mnist"] = {"data_dir": args.data_dir}
    settings = {"model": "2nn", "evaluators": (), "mechanisms": mechanisms, "tables": tables}
    if args.executor:
        settings["executor"] = args.executor
    config = make_config(settings)
    with warnings.catch_warnings():  # DP's warnings about the setting, not the timing
        warnings.simplefilter("ignore", privfl.PrivacyWarning)
        warnings.simplefilter("ignore", privfl.UtilityWarning)
        fed, _ = build_federation(config)
    return fed


def through_mechanism(setting: str, args: argparse.Namespace) -> dict[str, float]:
    """Alternate plain and secure rounds; return medians and the secure rounds' values."""
    plain = federation(SETTINGS[setting], args)
    secure = federation((*SETTINGS[setting], "secagg+"), args)
    plain_s, secure_s, plain_cpu, secure_cpu, values = [], [], [], [], []
    for number in range(1, args.rounds + 1):
        started = time.process_time()
        (plain_record,) = plain.run(number)
        middle = time.process_time()
        (secure_record,) = secure.run(number)
        ended = time.process_time()
        if plain_record.clients != secure_record.clients:
            raise AssertionError("the two federations sampled different clients")
        if number > 1:  # the first pair warms caches up
            plain_s.append(plain_record.seconds)
            secure_s.append(secure_record.seconds)
            plain_cpu.append(middle - started)
            secure_cpu.append(ended - middle)
            values.append(secure_record.values)
    plain.close()
    secure.close()
    mechanism = secure.mechanisms[-1]
    k, t = secagg_plus_parameters(
        len(plain_record.clients),
        dropout_rate=mechanism.tolerated_dropout,
        corruption_rate=mechanism.corruption_rate,
    )
    row = {
        "plain_s": statistics.median(plain_s),
        "secure_s": statistics.median(secure_s),
        "protocol_s": statistics.median(v["secagg_seconds"] for v in values),
        "kb_up": statistics.median(v["secagg_kb_sent_per_client"] for v in values),
        "bits": values[-1]["secagg_ring_bits"],
        "bound": values[-1].get("secagg_bound", float("nan")),  # older privfl: absent
        "clamped": sum(v["secagg_clamped"] for v in values),
        "k": k,
        "t": t,
    }
    row["ratio"] = row["secure_s"] / row["plain_s"]
    row["cpu_ratio"] = statistics.median(secure_cpu) / statistics.median(plain_cpu)
    return row


def print_mechanism_table(args: argparse.Namespace) -> None:
    executor = args.executor or make_config({}).executor
    print(
        f"Through the mechanism: 2NN, {args.clients_per_round} clients per round, secagg+ "
        f"at its defaults, executor {executor}, medians of {args.rounds - 1} alternating "
        f"rounds; {load_average()}"
    )
    print(
        f"{'setting':<10}{'bits':>5}{'bound':>9}{'k':>4}{'t':>4}{'plain s':>9}{'secure s':>10}"
        f"{'protocol s':>12}{'KB up':>8}{'clamped':>9}{'ratio':>7}{'CPU ratio':>10}"
    )
    for setting in args.settings:
        r = through_mechanism(setting, args)
        print(
            f"{setting:<10}{r['bits']:>5}{r['bound']:>9.3g}{r['k']:>4}{r['t']:>4}"
            f"{r['plain_s']:>9.3f}{r['secure_s']:>10.3f}{r['protocol_s']:>12.3f}"
            f"{r['kb_up']:>8.0f}{r['clamped']:>9}{r['ratio']:>7.2f}{r['cpu_ratio']:>10.2f}   "
            f"{load_average()}",
            flush=True,
        )


# -- The protocol on encoded updates --------------------------------------------------


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


def protocol_rows(model_name, clients_per_round, train, args):
    keep = KeepUpdates()
    torch.manual_seed(0)
    fed = privfl.Federation(
        model=MODELS[model_name](),
        train=train,
        partition=iid(len(train), 100, seed=0),
        training=privfl.LocalTraining(),
        sampler=UniformSampler(clients_per_round=clients_per_round),
        evaluators=(),
        executor=SerialExecutor(threads=1),
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


def print_protocol_table(args: argparse.Namespace) -> None:
    train = MNISTSource(args.data_dir).load().train
    print(
        f"\nThe protocol on encoded updates, one torch thread: planned dropout "
        f"{args.planned_dropout}, corruption {args.corruption}, real dropout {args.dropout}; "
        f"{args.frac_bits} fractional bits, bound {args.bound}; medians of "
        f"{args.rounds - 1} rounds; {load_average()}"
    )
    print(
        f"{'model':<5}{'n':>5} {'variant':<8}{'k':>4}{'t':>4}{'bits':>5}{'client s':>10}"
        f"{'per client':>11}{'server s':>10}{'MB up':>7}{'plain s':>9}{'secure s':>10}"
        f"{'ratio':>7}{'clamped':>9}"
    )
    for name in MODELS:
        for n in (10, 50, 100):
            for r in protocol_rows(name, n, train, args):
                print(
                    f"{name:<5}{n:>5} {r['variant']:<8}{r['k']:>4.0f}{r['t']:>4.0f}"
                    f"{r['bits']:>5.0f}{r['client_s']:>10.3f}{r['client_s'] / n:>11.4f}"
                    f"{r['server_s']:>10.3f}{r['mb_up']:>7.2f}{r['plain_s']:>9.3f}"
                    f"{r['wall_s']:>10.3f}{r['ratio']:>7.2f}{r['clamped']:>9.1e}",
                    flush=True,
                )


# -- The PRG's keystream --------------------------------------------------------------


def keystream_gbps(cipher: Cipher, size: int, repeats: int) -> float:
    """Best GB/s of writing ``size`` bytes of ``cipher``'s keystream into one buffer."""
    zeros, out = bytes(size), bytearray(size)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        cipher.encryptor().update_into(zeros, out)
        best = min(best, time.perf_counter() - started)
    return size / best / 1e9


def print_prg_table() -> None:
    size = 199_212 * 8  # a 2NN contribution in a 64-bit ring
    key = os.urandom(32)
    ciphers = {
        "chacha20": Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None),
        "aes-256-ctr": Cipher(algorithms.AES(key), modes.CTR(bytes(16))),
        "aes-128-ctr": Cipher(algorithms.AES(key[:16]), modes.CTR(key[16:])),
    }
    rates: dict[str, list[float]] = {name: [] for name in (*ciphers, "aes-128-gcm")}
    zeros, out, gcm = bytes(size), bytearray(size + 16), AESGCM(key[:16])
    for _ in range(5):  # alternating, so that both see the same load
        for name, cipher in ciphers.items():
            rates[name].append(keystream_gbps(cipher, size, 50))
        # the masks' PRG: GCM's counter mode (its tag, 16 bytes more, is dropped)
        seconds = best_seconds(lambda: gcm.encrypt_into(bytes(12), zeros, None, out), 50)
        rates["aes-128-gcm"].append(size / seconds / 1e9)
    medians = {name: statistics.median(rate) for name, rate in rates.items()}
    print(
        f"\nPRG keystream, {size / 1e6:.1f} MB per mask, GB/s (medians of best-of-50): "
        + ", ".join(
            f"{name} {rate:.2f} ({rate / medians['chacha20']:.2f}x ChaCha20)"
            for name, rate in medians.items()
        )
        + f"; {load_average()}"
    )
    vector = os.urandom(size)
    tags = {"poly1305": [], "gmac": []}
    for _ in range(5):  # alternating, as above
        tags["poly1305"].append(best_seconds(lambda: poly1305(key, vector), 50))
        tags["gmac"].append(best_seconds(lambda: gmac(key, vector), 50))
    poly, fast = (statistics.median(tags[name]) * 1e3 for name in ("poly1305", "gmac"))
    print(
        f"Tag of a masked input of {size / 1e6:.1f} MB, ms (medians of best-of-50): "
        f"Poly1305 {poly:.3f}, GMAC (AES-256-GCM) {fast:.3f} ({poly / fast:.1f}x faster); "
        f"{load_average()}"
    )


def best_seconds(work, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def poly1305(key: bytes, data: bytes) -> bytes:
    return Poly1305.generate_tag(key, data)


def gmac(key: bytes, data: bytes) -> bytes:
    return AESGCM(key).encrypt(bytes(12), b"", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per side, first is warm-up")
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--executor", help="executor of both sides; default: privfl run's")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=sorted(SETTINGS))
    parser.add_argument("--prg", action="store_true", help="also time the PRG keystreams")
    parser.add_argument("--protocol", action="store_true", help="also the protocol table")
    protocol = parser.add_argument_group("the protocol table")
    protocol.add_argument("--dropout", type=float, default=0.0, help="fraction that drops")
    protocol.add_argument("--planned-dropout", type=float, default=0.1, help="delta, k and t")
    protocol.add_argument("--corruption", type=float, default=0.1, help="gamma for k and t")
    protocol.add_argument("--frac-bits", type=int, default=20)
    protocol.add_argument("--bound", type=float, default=1.0, help="clamp |update| to this")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the first is a warm-up)")
    if args.dropout > args.planned_dropout:
        parser.error("--dropout above --planned-dropout would abort rounds")
    print(f"torch {torch.__version__}, data {args.data_dir or 'bundled sample'}")
    if args.prg:
        print_prg_table()
    print_mechanism_table(args)
    if args.protocol:
        print_protocol_table(args)


if __name__ == "__main__":
    main()
