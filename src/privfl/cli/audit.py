"""``privfl audit``: check a DP run's epsilon empirically with canary clients.

:func:`add_audit_parser` adds the subcommand to ``privfl``'s parser and
:func:`run_audit` runs it; the work is :func:`privfl.app.audit.audit_run_dir`'s.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from privfl.app.audit import AUDIT, audit_run_dir
from privfl.cli.arguments import add_verbosity_flags
from privfl.errors import ConfigError, PrivacyWarning, UtilityWarning


def add_audit_parser(commands: Any) -> None:
    """Add ``audit`` to ``commands`` (the subparsers of ``privfl``'s parser)."""
    audit = commands.add_parser(
        "audit",
        help="check a DP run's epsilon empirically with canary clients",
        description=(
            "Train a separate audit run of RUN_DIR's configuration with canary clients "
            "(about half of them, drawn at random, send a fixed random direction at the "
            "clip norm; the others send zeros), then write RUN_DIR/audit.json: the "
            "accountant's epsilon, a provable lower bound (Steinke et al. 2023) and "
            "empirical estimates for an adversary who sees every round or only the "
            "final model (Andrew et al. 2024). The run's own model is not touched."
        ),
    )
    audit.add_argument("run_dir", metavar="RUN_DIR", help="a run folder with a DP configuration")
    audit.add_argument(
        "--canaries",
        type=int,
        default=1000,
        metavar="N",
        help="canaries drawn; each is included with probability 1/2 (default: 1000)",
    )
    audit.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence of the lower bounds and intervals (default: 0.95)",
    )
    audit.add_argument(
        "--canary-seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the canaries' inclusion and directions (default: 0)",
    )
    add_verbosity_flags(audit)


def run_audit(args: argparse.Namespace, console: Console) -> int:
    """Run the audit that ``args`` asks for; print the table and the sentences; return 0."""
    if not 0 < args.confidence < 1:
        raise ConfigError("--confidence", args.confidence, "a number in (0, 1), such as 0.95")
    with warnings.catch_warnings():
        # The audit run repeats the run's configuration, whose warnings the run printed.
        warnings.simplefilter("ignore", PrivacyWarning)
        warnings.simplefilter("ignore", UtilityWarning)
        result = audit_run_dir(
            args.run_dir,
            canaries=args.canaries,
            confidence=args.confidence,
            seed=args.canary_seed,
            console=None if getattr(args, "verbosity", "normal") == "quiet" else console,
        )
    table = Table(title="privfl audit", show_header=False)
    table.add_row("claimed epsilon (accountant)", f"{result.claimed_epsilon:.4g}")
    table.add_row("delta", f"{result.delta:g}")
    table.add_row(
        f"provable lower bound ({result.confidence:.0%})", f"{result.lower_bound.epsilon:.4g}"
    )
    for title, estimate in (
        ("all-iterates estimate", result.all_iterates),
        ("final-model estimate", result.final_model),
    ):
        table.add_row(title, f"{estimate.epsilon:.3g} [{estimate.low:.3g}, {estimate.high:.3g}]")
    table.add_row("canaries (included)", f"{result.canaries} ({result.included})")
    table.add_row("written to", escape(str(args.run_dir) + "/" + AUDIT))
    console.print(table)
    for line in result.summary():
        console.print(f"- {escape(line)}", highlight=False, soft_wrap=True)
    return 0
