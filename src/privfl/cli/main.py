"""The ``privfl`` command: a thin layer over :mod:`privfl.app.runner`.

Flags of ``privfl run`` are generated from the fields of :class:`privfl.app.config.RunConfig`.
Errors a user can fix (bad values, unknown names, missing data) print one message and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from privfl import __version__
from privfl.app.config import RunConfig, component_flags, config_fields, load_toml, tomllib
from privfl.app.report import REPORT_FOLDER
from privfl.app.runner import (
    Run,
    config_from_file_and_flags,
    evaluate_run,
    execute,
    resume_run,
    start_run,
)
from privfl.builtin.console import COLUMNS
from privfl.cli.arguments import (
    OTHER_GROUP,
    CommandParser,
    add_verbosity_flags,
    flag_groups,
    kind_group,
    plain_help,
)
from privfl.cli.audit import add_audit_parser, run_audit
from privfl.cli.report import add_report_parser, run_report
from privfl.cli.smpc_party import add_party_parser, run_party_command
from privfl.errors import (
    ConfigError,
    PluginError,
    PrivacyWarning,
    PrivflError,
    UtilityWarning,
)
from privfl.options import OptionSpec, declared_options
from privfl.plugins import get_plugin_manager
from privfl.registry import KINDS, ComponentRegistry

EXIT_USAGE = 2
LOG_HANDLER = "privfl.cli"
"""Name of the logging handler that the command adds to the ``privfl`` logger."""
EXIT_INTERRUPTED = 130


COMPONENT_FLAG = "component:"
"""Prefix of the argparse destinations of flags that components declare."""


def build_parser(registry: ComponentRegistry | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of the ``privfl`` command.

    :param registry: Whose components' declared flags ``privfl run`` takes; default:
        the installed plugins'.
    """
    registry = registry if registry is not None else get_plugin_manager().components
    parser = CommandParser(
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
    _add_run_flags(run, registry)

    resume = commands.add_parser("resume", help="continue an interrupted run from its folder")
    resume.add_argument("run_dir", metavar="RUN_DIR")
    add_verbosity_flags(resume)

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
    add_verbosity_flags(evaluate)

    commands.add_parser("plugins", help="list plugins, their hooks and their components")
    add_report_parser(commands)
    add_audit_parser(commands)
    add_party_parser(commands)
    return parser


def _add_run_flags(run: argparse.ArgumentParser, registry: ComponentRegistry) -> None:
    """Add the flags of ``privfl run``, grouped by concern: config keys by their
    ``group``, component flags by the kind of the components that declare them."""
    declared = sorted(component_flags(registry).items())
    owner_groups = {
        flag: kind_group(owners[0][0], registry.get(owners[0][0], owners[0][1]))
        for flag, owners in declared
    }
    key_groups = {spec.name: spec.metadata.get("group") or OTHER_GROUP for spec in config_fields()}
    fixed = ["privacy", "secure aggregation", "output"]  # --dp, --secagg, --quiet/--verbose
    groups = flag_groups(run, [*key_groups.values(), *owner_groups.values(), *fixed])
    for spec in config_fields():
        _add_config_flag(groups[key_groups[spec.name]], spec)
    groups["privacy"].add_argument(
        "--dp",
        action="store_true",
        default=argparse.SUPPRESS,
        help="Add mechanism dp: client-level DP-FedAvg (McMahan et al. 2018), accounted.",
    )
    groups["secure aggregation"].add_argument(
        "--secagg",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="Add a secure-aggregation mechanism: secagg (Bonawitz et al. 2017) or secagg+ "
        "(Bell et al. 2020).",
    )
    for flag, owners in declared:
        _add_component_flag(groups[owner_groups[flag]], flag, owners)
    add_verbosity_flags(groups["output"])


def _add_config_flag(parser: argparse._ArgumentGroup, spec: Any) -> None:
    flag = spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")
    kind = str(spec.type)
    common: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS}
    help_text = plain_help(spec.metadata["help"])
    if spec.name == "tables":
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


def _add_component_flag(
    group: argparse._ArgumentGroup, flag: str, owners: list[tuple[str, str, OptionSpec]]
) -> None:
    specs = [spec for _, _, spec in owners]
    names = ", ".join(f"{name}.{spec.name}" for _, name, spec in owners)
    defaults = {repr(spec.default) for spec in specs}
    helps = {f"{name}.{spec.name}": plain_help(spec.help) for _, name, spec in owners if spec.help}
    if len(set(helps.values())) > 1:  # the owners mean different things by it: say each
        help_text = " ".join(f"{owner}: {text}" for owner, text in helps.items())
    else:
        help_text = next(iter(helps.values()), "")
    if len(defaults) == 1 and not specs[0].required:
        help_text += f" (default: {specs[0].default})"
    common: dict[str, Any] = {
        "dest": COMPONENT_FLAG + flag,
        "default": argparse.SUPPRESS,
        "help": f"{help_text} [{names}]".strip(),
    }
    try:
        if specs[0].type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
            return
        types = [t.strip() for t in specs[0].type.split("|")]
        value_type = int if "int" in types else float if "float" in types else str
        group.add_argument(flag, type=value_type, metavar=specs[0].name.upper(), **common)
    except argparse.ArgumentError as error:
        raise PluginError(f"the flag {flag} of {names} clashes with another: {error}") from None


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
    console = Console(stderr=False)
    try:
        parser = build_parser()
    except PrivflError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    quiet = getattr(args, "verbosity", "normal") == "quiet"
    _configure_logging(getattr(args, "verbosity", "normal"))
    try:
        if args.command == "plugins":
            return _plugins(console)
        if args.command == "evaluate":
            return _evaluate(args.run_dir, args.backend, args.limit, console, quiet)
        if args.command == "report":
            return run_report(args, console)
        if args.command == "audit":
            return run_audit(args, console)
        if args.command == "evaluate-party":
            return run_party_command(args, console)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PrivacyWarning)
            warnings.simplefilter("always", UtilityWarning)
            if args.command == "resume":
                run = resume_run(args.run_dir)
                if not quiet:
                    console.print(
                        f"resuming [bold]{run.run_dir}[/] after round {run.federation.round}"
                    )
            else:
                run = start_run(_config_from_args(args))
                if not quiet:
                    console.print(f"run folder [bold]{run.run_dir}[/] · data {run.data.source}")
        for warning in caught:
            console.print(
                f"[bold yellow]warning:[/] {escape(str(warning.message))}", highlight=False
            )
        return _execute(run, console, quiet)
    except PrivflError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_USAGE


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's configuration: the file, then core flags, then component flags."""
    flags, declared = {}, {}
    for key, value in vars(args).items():
        if key.startswith(COMPONENT_FLAG):
            declared[key.removeprefix(COMPONENT_FLAG)] = value
        elif key not in ("command", "config", "dp", "secagg", "verbosity"):
            flags[key] = value
    if "tables" in flags:
        flags["tables"] = parse_options(flags["tables"])
    added = (["dp"] if getattr(args, "dp", False) else []) + (
        [args.secagg] if getattr(args, "secagg", None) else []
    )
    if added:
        file_mechanisms = (load_toml(args.config) if args.config else {}).get("mechanisms", [])
        given = list(flags.get("mechanisms", file_mechanisms))
        flags["mechanisms"] = tuple(dict.fromkeys([*given, *added]))
    return config_from_file_and_flags(args.config, flags, declared)


def _execute(run: Run, console: Console, quiet: bool = False) -> int:
    try:
        records = execute(run, console=None if quiet else console)
    except KeyboardInterrupt:
        console.print(f"interrupted; continue with: privfl resume {run.run_dir}")
        return EXIT_INTERRUPTED
    rows = [("rounds", str(run.federation.round))]
    evaluated = [r for r in records if r.metrics]
    if evaluated:
        for name, value in evaluated[-1].metrics.items():
            rows.append((f"final {name}", _number(value, name)))
    epsilons = [r.values["epsilon"] for r in records if "epsilon" in r.values]
    if epsilons:
        delta = [r.values["delta"] for r in records if "delta" in r.values][-1]
        rows.append(("epsilon", f"{_number(epsilons[-1], 'epsilon')} (δ {delta:g})"))
        methods = [r.values["accountant"] for r in records if "accountant" in r.values]
        if methods:
            rows.append(("accountant", str(methods[-1])))
    if run.federation.stop_reason:
        rows.append(("stopped", run.federation.stop_reason))
    rows.append(("seconds", f"{sum(r.seconds for r in records):.1f}"))
    rows.append(("run folder", str(run.run_dir)))
    if run.config.report:
        rows.append(("report", str(run.run_dir / REPORT_FOLDER)))
    _summary("privfl run", rows, console, quiet)
    return 0


def _summary(title: str, rows: list[tuple[str, str]], console: Console, quiet: bool) -> None:
    """Print a command's results: a table, or with --quiet one line."""
    if quiet:
        line = " · ".join(f"{name} {value}" for name, value in rows)
        console.print(f"{title}: {escape(line)}", highlight=False, soft_wrap=True)
        return
    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(table)


def _evaluate(run_dir: str, backend: str, limit: int, console: Console, quiet: bool) -> int:
    if limit < 0:
        raise ConfigError("limit", limit, "an integer >= 0 (0: all test images)")
    with Progress(
        TextColumn(f"[bold]{backend} evaluation"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("images", total=None)
        scores = evaluate_run(
            run_dir,
            backend,
            limit=limit,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    rows = [(name, _number(value, name)) for name, value in scores.items()]
    rows.append(("written to", str(Path(run_dir) / f"evaluation-{backend}.json")))
    _summary(f"privfl evaluate ({backend})", rows, console, quiet)
    return 0


def _number(value: float, key: str) -> str:
    """A result as the per-round table shows ``key`` (accuracy in %), or to 4 decimals."""
    spec = COLUMNS.get(key)
    if spec is not None:
        return spec.format(value) + spec.unit
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def _configure_logging(verbosity: str) -> None:
    """Send the library's log (the ``privfl`` logger) to standard error: warnings and
    errors, and with ``--verbose`` everything down to DEBUG."""
    logger = logging.getLogger("privfl")
    for handler in [h for h in logger.handlers if h.get_name() == LOG_HANDLER]:
        logger.removeHandler(handler)  # main() may run more than once in a process
    handler = RichHandler(console=Console(stderr=True), show_path=False)
    handler.set_name(LOG_HANDLER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbosity == "verbose" else logging.WARNING)


def _plugins(console: Console) -> int:
    pm = get_plugin_manager()
    registry = pm.components
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        registered = [
            (kind, component)
            for kind in KINDS
            for component, entry in registry.entries(kind).items()
            if entry.plugin == name
        ]
        console.print(f"[bold]{name}[/] ({pm.distributions.get(name, 'built-in')})", soft_wrap=True)
        console.print(f"  hooks: {', '.join(hooks)}", highlight=False, soft_wrap=True)
        for kind, component in registered:
            options = ", ".join(
                _describe_option(spec) for spec in declared_options(registry.get(kind, component))
            )
            console.print(
                f"  {kind} {component}: {options or 'no options'}", highlight=False, soft_wrap=True
            )
    return 0


def _describe_option(spec: OptionSpec) -> str:
    default = "required" if spec.required else repr(spec.default)
    return f"{spec.name}={default}" + (f" ({spec.flag})" if spec.flag else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
