"""The ``privfl`` command: a thin layer over :mod:`privfl.runner`.

Flags of ``privfl run`` are generated from the fields of :class:`privfl.config.RunConfig`.
Errors a user can fix (bad values, unknown names, missing data) print one message and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from privfl import __version__
from privfl.config import config_fields, tomllib
from privfl.errors import ConfigError, PrivacyWarning, PrivflError
from privfl.plugins import get_plugin_manager
from privfl.registry import KINDS
from privfl.runner import (
    Run,
    config_from_file_and_flags,
    evaluate_run,
    execute,
    resume_run,
    start_run,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``privfl`` command."""
    parser = argparse.ArgumentParser(
        prog="privfl", description="Privacy-preserving federated learning on PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"privfl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="train a federation (defaults: the bundled MNIST sample)",
        description="Train a federation. Flags override the CONFIG file's keys.",
    )
    run.add_argument("config", nargs="?", metavar="CONFIG.toml", help="a TOML config file")
    for spec in config_fields():
        _add_config_flag(run, spec)

    resume = commands.add_parser("resume", help="continue an interrupted run from its folder")
    resume.add_argument("run_dir", metavar="RUN_DIR")

    evaluate = commands.add_parser(
        "evaluate",
        help="score a finished run's model, in the clear or on an encrypted test set",
        description="Score RUN_DIR's final model on its test set and write "
        "RUN_DIR/evaluation-BACKEND.json.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument(
        "--backend",
        default="plaintext",
        help="evaluator name: plaintext or smpc (default: plaintext)",
    )
    evaluate.add_argument(
        "--limit", type=int, default=0, metavar="N", help="only the first N test images (0: all)"
    )

    commands.add_parser("plugins", help="list plugins, their hooks and their components")
    return parser


def _add_config_flag(parser: argparse.ArgumentParser, spec: Any) -> None:
    flag = spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")
    kind = str(spec.type)
    common: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS}
    help_text = spec.metadata["help"]
    if spec.name == "options":
        parser.add_argument(
            flag, action="append", metavar="NAME.KEY=VALUE", help=help_text, **common
        )
    elif kind.startswith("bool"):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **common)
    elif kind.startswith("tuple"):
        parser.add_argument(flag, action="append", metavar="NAME", help=help_text, **common)
    else:
        value_type = int if kind.startswith("int") else float if kind.startswith("float") else str
        parser.add_argument(
            flag,
            type=value_type,
            metavar=spec.name.upper(),
            help=f"{help_text} (default: {spec.default})",
            **common,
        )


def parse_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Turn ``NAME.KEY=VALUE`` items into option tables; VALUE is read as TOML if it can be."""
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        name, dot, key = target.rpartition(".")
        if not (sep and dot and name and key):
            raise ConfigError("option", item, "NAME.KEY=VALUE, e.g. plaintext.batch_size=500")
        try:
            value = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            value = raw
        options.setdefault(name, {})[key] = value
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privfl`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        if args.command == "plugins":
            return _plugins(console)
        if args.command == "evaluate":
            return _evaluate(args.run_dir, args.backend, args.limit, console)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PrivacyWarning)
            if args.command == "resume":
                run = resume_run(args.run_dir)
                console.print(f"resuming [bold]{run.run_dir}[/] after round {run.federation.round}")
            else:
                flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
                if "options" in flags:
                    flags["options"] = parse_options(flags["options"])
                run = start_run(config_from_file_and_flags(args.config, flags))
                console.print(f"run folder [bold]{run.run_dir}[/] · data {run.data.source}")
        for warning in caught:
            console.print(f"[bold yellow]warning:[/] {warning.message}", highlight=False)
        return _execute(run, console)
    except PrivflError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USAGE


def _execute(run: Run, console: Console) -> int:
    try:
        records = execute(run, console=console)
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: privfl resume {run.run_dir}")
        return EXIT_INTERRUPTED
    table = Table(title="privfl run", show_header=False)
    evaluated = [r for r in records if r.metrics]
    table.add_row("rounds", str(run.federation.round))
    if evaluated:
        for name, value in evaluated[-1].metrics.items():
            table.add_row(f"final {name}", _number(value))
    epsilons = [r.values["epsilon"] for r in records if "epsilon" in r.values]
    if epsilons:
        table.add_row("epsilon", f"{epsilons[-1]:.4g} (delta {run.config.delta:g})")
    if run.federation.stop_reason:
        table.add_row("stopped", run.federation.stop_reason)
    table.add_row("seconds", f"{sum(r.seconds for r in records):.1f}")
    table.add_row("run folder", str(run.run_dir))
    console.print(table)
    return 0


def _evaluate(run_dir: str, backend: str, limit: int, console: Console) -> int:
    if limit < 0:
        raise ConfigError("limit", limit, "an integer >= 0 (0: all test images)")
    with Progress(
        TextColumn(f"[bold]{backend} evaluation"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("images", total=None)
        scores = evaluate_run(
            run_dir,
            backend,
            limit=limit,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    table = Table(title=f"privfl evaluate ({backend})", show_header=False)
    for name, value in scores.items():
        table.add_row(name, _number(value))
    table.add_row("written to", str(Path(run_dir) / f"evaluation-{backend}.json"))
    console.print(table)
    return 0


def _number(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def _plugins(console: Console) -> int:
    pm = get_plugin_manager()
    registry = pm.components
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        registered = [
            f"{kind} {component}"
            for kind in KINDS
            for component, entry in registry.entries(kind).items()
            if entry.plugin == name
        ]
        console.print(f"[bold]{name}[/] ({pm.distributions.get(name, 'built-in')})", soft_wrap=True)
        console.print(f"  hooks: {', '.join(hooks)}", highlight=False, soft_wrap=True)
        if registered:
            console.print(f"  components: {', '.join(registered)}", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
