"""Bytes against accuracy: every built-in compressor beside the uncompressed run.

Workload (McMahan et al. 2017's MNIST setting): real MNIST, 100 IID clients, 10 per
round, one local epoch, batch size 10, step size 0.1, the same seed, model
initialisation, partition and rounds for every configuration, including the
uncompressed baseline, all in this one run. For each model and compressor it prints:
the uplink bytes per client per round (the encoded bytes that cross the message
boundary, headers included), the ratio of float32's ``4 * dim`` bytes to them, the
final test accuracy and its gap to the uncompressed run (percentage points), the
median seconds per round, and the shares of a round spent encoding (the clients' half,
which must stay under 10%) and decoding (the server's half), over the rounds after the
first (which also loads the compiled kernels, once a process) and without evaluation,
and the milliseconds of encoding per client (comparable across runs whose
rounds take different times). The load average is printed with the table, since the
machine may be shared.

With ``--executor serial`` the clients train one at a time, as each device would train
alone (the default, ``vectorized``, trains a round's clients stacked, about three times
as fast, so encoding is a larger share of its round).

With ``--downlink-bits B`` every compressor also runs with the global model sent in
``B`` bits per coordinate (:mod:`privfl.downlink`, Caldas et al. 2018), and the gap is
to a first, uncompressed run both ways; ``down/client`` is the bytes of the model each
client receives per round (``downlink_bytes``).

Usage: ``python bench/compression.py --data-dir ../shared/data/mnist``
"""

from __future__ import annotations

import os

# Both sides get what `privfl run` gets (privfl sets these when imported before torch).
os.environ.setdefault("GOMP_SPINCOUNT", "30000")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import gc
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from privfl import Federation, LocalTraining
from privfl.builtin.samplers import UniformSampler
from privfl.data.partition import iid
from privfl.testing import make_plugin_manager

sys.path.insert(0, str(Path(__file__).parent))
from centralized_floor import MODELS, load

ROTATED_2_BITS = {"bits": 2, "rotation": True, "scale": "max"}
CONFIGS: dict[str, list[tuple[str | None, dict[str, Any]]]] = {
    "2nn": [
        (None, {}),
        ("qsgd", {"bits": 4}),
        ("qsgd", {"bits": 2, "rotation": True, "scale": "max"}),
        ("random-mask", {"fraction": 0.25}),
        ("topk", {"fraction": 0.05, "value_bits": 8}),
        ("topk", {"fraction": 0.03, "value_bits": 8}),
        ("low-rank", {"rank": 0.1}),
        ("low-rank", {"rank": 0.05, "value_bits": 16}),
        ("low-rank", {"rank": 0.25, "unbiased": False}),
        ("random-mask,qsgd", {"random-mask": {"fraction": 0.25}, "qsgd": ROTATED_2_BITS}),
        ("topk,qsgd", {"topk": {"fraction": 0.05}, "qsgd": {**ROTATED_2_BITS, "bits": 4}}),
        ("topk,qsgd", {"topk": {"fraction": 0.05}, "qsgd": ROTATED_2_BITS}),
    ],
    "cnn": [
        (None, {}),
        ("qsgd", {"bits": 2, "rotation": True, "scale": "max"}),
        ("topk", {"fraction": 0.04, "value_bits": 8}),
        ("topk", {"fraction": 0.015, "value_bits": 8}),
        ("low-rank", {"rank": 0.25}),
        ("low-rank", {"rank": 0.1}),
        ("random-mask,qsgd", {"random-mask": {"fraction": 0.1}, "qsgd": ROTATED_2_BITS}),
        ("topk,qsgd", {"topk": {"fraction": 0.04}, "qsgd": ROTATED_2_BITS}),
    ],
}
"""Per model, the compressors compared: a name and its options, or a stack's names
separated by commas and a table of options per stage."""


def run(
    model_name: str,
    data: tuple,
    rounds: int,
    name: str | None,
    options: dict,
    downlink_bits: int | None = None,
    executor: str = "vectorized",
) -> dict:
    train, test = data
    # Each configuration starts from the same heap: a full garbage collection, then
    # what is alive frozen, so that collecting the earlier configurations' objects (a
    # gen-2 collection took 0.1-0.13 s here) does not land in whichever phase of this
    # run allocates at that moment (it once made a run's encoding look 50% slower).
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    torch.manual_seed(0)
    fed = Federation(
        model=MODELS[model_name](),
        train=train,
        test=test,
        partition=iid(len(train), 100, seed=0),
        training=LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler=UniformSampler(clients_per_round=10),
        compressor=name,
        downlink_bits=downlink_bits,
        executor=executor,
        options=None if name is None else options if "," in name else {name: options},
        eval_every=rounds,
        seed=0,
        plugins=make_plugin_manager(),
    )
    records = fed.run(rounds)
    fed.close()
    dim = fed.params.numel()
    uplink = statistics.mean(r.values.get("uplink_bytes", 4 * dim) for r in records)
    # Rounds after the first (which loads numba's compiled kernels from its cache, or
    # compiles them, once a process) and without evaluation (the last one evaluates).
    timed = records[1:-1] if rounds > 2 else records
    total = sum(r.seconds for r in timed)
    return {
        "downlink": statistics.mean(r.values["downlink_bytes"] for r in records),
        "uplink": uplink,
        "ratio": 4 * dim / uplink,
        "accuracy": records[-1].metrics["accuracy"],
        "seconds": statistics.median(r.seconds for r in timed),
        "encode_share": sum(r.values.get("encode_seconds", 0) for r in timed) / total,
        "decode_share": sum(r.values.get("decode_seconds", 0) for r in timed) / total,
        "encode_ms": 1000
        * sum(r.values.get("encode_seconds", 0) for r in timed)
        / sum(len(r.clients) for r in timed),
    }


def label(name: str | None, options: dict) -> str:
    if name is None:
        return "float32 (none)"
    tables = options.values() if "," in name else [options]
    return name + "".join(f" {k}={v}" for table in tables for k, v in table.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: bundled sample)")
    parser.add_argument("--models", nargs="+", default=["2nn", "cnn"], choices=sorted(CONFIGS))
    parser.add_argument("--rounds-2nn", type=int, default=50)
    parser.add_argument("--rounds-cnn", type=int, default=20)
    parser.add_argument("--downlink-bits", type=int, default=None, help="compress the model too")
    parser.add_argument(
        "--executor",
        default="vectorized",
        choices=["vectorized", "serial"],
        help="how the clients train: stacked (the default) or one at a time, as devices do",
    )
    args = parser.parse_args()
    data = load(args.data_dir)
    for model_name in args.models:
        rounds = args.rounds_2nn if model_name == "2nn" else args.rounds_cnn
        print(
            f"\n{model_name}: 100 IID clients, 10 per round, {rounds} rounds, seed 0,"
            f" {args.executor} executor",
            flush=True,
        )
        pad = 10 if args.downlink_bits else 2  # room for ", down Bb"
        width = max(38, *(len(label(*config)) + pad for config in CONFIGS[model_name]))
        print(
            f"{'compressor':<{width}}{'down/client':>12}{'bytes/client':>14}{'ratio':>9}"
            f"{'accuracy':>10}"
            f"{'gap pts':>9}{'s/round':>9}{'encode':>8}{'decode':>8}{'enc ms/client':>14}",
            flush=True,
        )
        baseline = None
        configs = [(name, options, args.downlink_bits) for name, options in CONFIGS[model_name]]
        if args.downlink_bits:  # the gap is to the run uncompressed both ways
            configs.insert(0, (None, {}, None))
        for name, options, downlink_bits in configs:
            result = run(model_name, data, rounds, name, options, downlink_bits, args.executor)
            text = label(name, options) + (f", down {downlink_bits}b" if downlink_bits else "")
            baseline = baseline if baseline is not None else result["accuracy"]
            gap = 100 * (baseline - result["accuracy"])
            print(
                f"{text:<{width}}{result['downlink']:>12,.0f}"
                f"{result['uplink']:>14,.0f}{result['ratio']:>8.1f}x"
                f"{result['accuracy']:>10.4f}{gap:>9.2f}{result['seconds']:>9.2f}"
                f"{result['encode_share']:>8.1%}{result['decode_share']:>8.1%}"
                f"{result['encode_ms']:>14.2f}",
                flush=True,
            )
    print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
