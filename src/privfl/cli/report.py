"""``privfl report``: plots, a summary and CSV histories of one run or several.

:func:`add_report_parser` adds the subcommand to ``privfl``'s parser and
:func:`run_report` runs it; the work is :func:`privfl.app.report.write_report`'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from privfl.app.report import DPI, FIGSIZE, REPORT_FOLDER, write_report
from privfl.cli.arguments import add_verbosity_flags
from privfl.errors import ConfigError


def add_report_parser(commands: Any) -> None:
    """Add ``report`` to ``commands`` (the subparsers of ``privfl``'s parser)."""
    width, height = (round(inches * DPI) for inches in FIGSIZE)
    report = commands.add_parser(
        "report",
        help="plot runs' accuracy, loss, epsilon, bytes and time per round; export CSV",
        description=(
            "Plot one run, or several overlaid, per round: test accuracy and loss, epsilon "
            f"(DP runs), kB sent per client (secure aggregation) and seconds, as {width}x"
            f"{height} PNG and SVG files; write summary.md and each run's history as CSV. "
            "Several runs' legend names the config keys in which they differ. "
            "Needs matplotlib: pip install 'privfl[report]'."
        ),
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder")
    report.add_argument(
        "--out",
        metavar="DIR",
        help=f"output folder (default for one run: RUN_DIR/{REPORT_FOLDER}; required for "
        "several runs)",
    )
    add_verbosity_flags(report)


def run_report(args: argparse.Namespace, console: Console) -> int:
    """Write the report that ``args`` asks for; print what was written (with ``--quiet``,
    one line); return 0."""
    if args.out is None and len(args.run_dirs) > 1:
        raise ConfigError(
            "--out", None, "an output folder for a report of several runs: add --out DIR"
        )
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / REPORT_FOLDER
    report = write_report(args.run_dirs, out)
    plotted = ", ".join(plot.name for plot in report.plotted)
    console.print(
        f"report written to [bold]{escape(str(report.out_dir))}[/]: {plotted} (PNG and SVG), "
        "summary.md, CSV history",
        highlight=False,
        soft_wrap=True,
    )
    if getattr(args, "verbosity", "normal") == "quiet":
        return 0
    for plot in report.skipped:
        console.print(f"  not plotted: {plot.name}: {escape(plot.missing)}", highlight=False)
    return 0
