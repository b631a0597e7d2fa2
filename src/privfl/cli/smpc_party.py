"""``privfl evaluate-party``: one party of an encrypted evaluation across processes or hosts.

Three commands, one per party, evaluate a finished run's model on the data owner's MNIST
test images (:mod:`privfl.smpc.distributed`): the model owner listens at ``--address``
and the data owner and the dealer connect to it. The data owner alone gets the
predictions (and, holding the labels, the accuracy). :func:`add_party_parser` adds the
subcommand to ``privfl``'s parser and :func:`run_party_command` runs it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from privfl.app.runner import final_model, finished_run_config
from privfl.cli.arguments import add_verbosity_flags
from privfl.data.mnist import MNIST_MEAN, MNIST_STD, images_to_float, load_bundled_mnist, load_mnist
from privfl.errors import ConfigError
from privfl.plugins import get_plugin_manager
from privfl.smpc.channel import ROLES
from privfl.smpc.distributed import PartyReport, WireFormat, run_party
from privfl.smpc.headroom import check_inputs, check_model_headroom

MNIST_SHAPE = (1, 28, 28)
"""What the data owner shares: MNIST images through :func:`images_to_float`."""
MNIST_INPUT_BOUND = math.ceil(100 * max(MNIST_MEAN, 1 - MNIST_MEAN) / MNIST_STD) / 100
"""Public bound on those images' values (2.83): standardised pixels lie in about
[-0.42, 2.82]. The model owner checks its headroom against it, the data owner its images."""


def add_party_parser(commands: Any) -> None:
    """Add ``evaluate-party`` to ``commands`` (the subparsers of ``privfl``'s parser)."""
    party = commands.add_parser(
        "evaluate-party",
        help="run one party (model owner, data owner or dealer) of an encrypted evaluation",
        description=(
            "Run one of the three parties of an encrypted evaluation over TCP "
            "(torch.distributed, gloo). The model owner listens at --address with RUN_DIR's "
            "model; the data owner connects with its MNIST test images and alone receives "
            "the predictions; the dealer connects and supplies correlated randomness. "
            "gloo does not encrypt: across hosts, run it inside a VPN or SSH tunnel."
        ),
    )
    party.add_argument(
        "--role", required=True, choices=list(ROLES), help="which party this process is"
    )
    party.add_argument(
        "--address",
        required=True,
        metavar="HOST:PORT",
        help="where the model owner listens (all three parties pass the same address)",
    )
    party.add_argument("--run-dir", metavar="RUN_DIR", help="model owner: a finished run")
    party.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data owner: a folder with the MNIST IDX files (default: the bundled sample)",
    )
    party.add_argument(
        "--limit", type=int, default=0, metavar="N", help="data owner: first N test images"
    )
    party.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="data owner: images per secure forward pass (default: 64)",
    )
    party.add_argument(
        "--frac-bits",
        type=int,
        default=16,
        metavar="F",
        help="model owner: fractional bits of the fixed-point encoding, 8 to 24 (default: 16)",
    )
    party.add_argument(
        "--send-all-shares",
        action="store_true",
        help="model owner: send every share instead of keys, bits as words, and open the "
        "masked weights once per batch (to measure what the cuts save)",
    )
    party.add_argument(
        "--output", metavar="FILE.json", help="write this party's results and byte counts"
    )
    party.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up when a peer is silent this long (default: 600)",
    )
    add_verbosity_flags(party)


def run_party_command(args: argparse.Namespace, console: Console) -> int:
    """Run the party that ``args`` names; print (and with ``--output`` write) its results."""
    if args.limit < 0:
        raise ConfigError("--limit", args.limit, "an integer >= 0 (0: all test images)")
    if args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "an integer >= 1")
    if not 8 <= args.frac_bits <= 24:
        raise ConfigError("--frac-bits", args.frac_bits, "an integer from 8 to 24")
    kwargs: dict[str, Any] = {}
    labels = None
    if args.role == "model-owner":
        if args.run_dir is None:
            raise ConfigError("--run-dir", None, "the model owner's finished run folder")
        kwargs["model"] = model = load_run_model(Path(args.run_dir))
        if isinstance(model, torch.nn.Sequential):  # run_party refuses other models
            # shapes and headroom, before anything is shared
            check_model_headroom(model, MNIST_SHAPE, MNIST_INPUT_BOUND, args.frac_bits)
        kwargs["frac_bits"] = args.frac_bits
        kwargs["wire"] = (
            WireFormat(False, False, False, False) if args.send_all_shares else WireFormat()
        )
    elif args.role == "data-owner":
        data = load_mnist(args.data_dir) if args.data_dir else load_bundled_mnist()
        count = args.limit or len(data.test_labels)
        kwargs["images"] = images = images_to_float(data.test_images[:count])
        check_inputs(images, MNIST_INPUT_BOUND)
        kwargs["batch_size"] = args.batch_size
        labels = data.test_labels[:count]
    report = run_party(args.role, args.address, timeout_s=args.timeout, **kwargs)
    summary = _summary(report, labels)
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    if args.verbosity != "quiet":
        console.print(escape(json.dumps({k: v for k, v in summary.items() if k != "predictions"})))
    return 0


def load_run_model(run_dir: Path) -> torch.nn.Module:
    """The final model of the finished run in ``run_dir`` (as ``privfl evaluate`` loads it)."""
    config = finished_run_config(run_dir, "--run-dir")
    return final_model(run_dir, config, get_plugin_manager().components)[1]


def _summary(report: PartyReport, labels: torch.Tensor | None) -> dict[str, Any]:
    """What the party prints: bytes per phase and per image, times, and (data owner)
    the predictions and their accuracy."""
    sent = sum(phase["sent"] for phase in report.bytes.values())
    out: dict[str, Any] = {
        "role": report.role,
        "images": report.images,
        "bytes_sent": sent,
        "bytes_sent_per_image": sent / max(report.images, 1),
        "bytes_by_phase": report.bytes,
        "offline_s": report.offline_s,
        "online_s": report.online_s,
    }
    if report.predictions is not None and labels is not None:
        out["accuracy"] = float((report.predictions == labels).double().mean())
        out["predictions"] = report.predictions.tolist()
    return out
