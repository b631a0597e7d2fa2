"""Run reports: plots, a Markdown summary and a CSV export of run folders' histories.

The pure functions read a run folder (:func:`load_run`), name runs by what differs in
their configs (:func:`run_labels`), lay a history out as CSV rows (:func:`csv_table`),
draw one matplotlib figure per quantity (:func:`plot_figure`) and summarise runs in
Markdown (:func:`summary_markdown`); :func:`write_report` writes them to a folder.

matplotlib (the ``report`` extra) is imported only by the functions that draw, so
``import privfl`` stays light; figures are :class:`matplotlib.figure.Figure` objects
saved by their own canvas, without pyplot's global state or an interactive backend.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privfl.app.config import load_toml
from privfl.app.runner import CONFIG
from privfl.builtin.rundir import HISTORY, STATUS, read_history
from privfl.errors import ConfigError, PrivflError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FOLDER = "report"
"""Where ``privfl report RUN_DIR`` and ``privfl run --report`` write: ``RUN_DIR/report``."""

FIGSIZE = (6.4, 4.0)
DPI = 100
"""Figures are FIGSIZE inches at DPI dots per inch: PNG files of 640 x 400 pixels."""

INSTALL_HINT = "pip install 'privfl[report]'"


@dataclass(frozen=True)
class Plot:
    """One figure of a report: a history key drawn against the round number.

    :ivar name: The file stem (``NAME.png``, ``NAME.svg``).
    :ivar key: The ``history.jsonl`` key drawn; rounds without it are left out.
    :ivar missing: Why no run may hold ``key``, said in the summary when none does.
    """

    name: str
    key: str
    title: str
    ylabel: str
    missing: str


PLOTS = (
    Plot("accuracy", "accuracy", "Test accuracy", "accuracy", "no evaluator reported accuracy"),
    Plot("loss", "loss", "Test loss", "loss", "no evaluator reported loss"),
    Plot(
        "epsilon",
        "epsilon",
        "Privacy spent",
        "epsilon",
        "no run records epsilon (only runs with client-level DP, `--dp`, do)",
    ),
    Plot(
        "bytes-per-client",
        "secagg_kb_sent_per_client",
        "Bytes sent per client",
        "kB sent per client",
        "no run records bytes per client (only runs with secure aggregation, "
        "`--secagg`, count them)",
    ),
    Plot(
        "uplink-bytes",
        "uplink_bytes",
        "Encoded update size per client",
        "bytes per client",
        "no run records uplink bytes (only runs with a compressor, `--compressor`, do)",
    ),
    Plot("mse", "mse", "Test MSE", "MSE", "no evaluator reported mse (regression runs do)"),
    Plot("r2", "r2", "Test R²", "R²", "no evaluator reported r2 (regression runs do)"),
    Plot("seconds", "seconds", "Time per round", "seconds", "no run records seconds"),
)
"""The report's figures, in the order the summary lists them."""


@dataclass(frozen=True)
class RunHistory:
    """A run folder as a report reads it: its config, its rounds and its status."""

    run_dir: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.run_dir.name


def load_run(run_dir: str | Path) -> RunHistory:
    """Read ``config.toml``, ``history.jsonl`` and ``status.json`` of a run folder.

    :raises ConfigError: for a folder that is not a run folder, or whose history holds
        no round or cannot be read.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(
            "run_dir", str(run_dir), f"a run folder holding {CONFIG} (one that `privfl run` made)"
        )
    config = load_toml(run_dir / CONFIG)  # each refuses a damaged file, naming it
    records = read_history(run_dir)
    if not records:
        raise ConfigError(
            "run_dir", str(run_dir), f"a run with at least one finished round in {HISTORY}"
        )
    return RunHistory(run_dir, config, records, _status(run_dir / STATUS))


def _status(path: Path) -> dict[str, Any]:
    """``status.json``'s fields; empty when it is missing or damaged (a report only
    shows the status, and a kill can leave none)."""
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


OUTPUT_KEYS = ("run_dir", "report")
"""Config keys that say where a run's outputs go, not what ran: never in a label."""


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Core keys as they are and component tables as ``NAME.KEY``, less the output keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{option}": v for option, v in value.items()})
        elif key not in OUTPUT_KEYS:
            flat[key] = value
    return flat


def run_labels(runs: Sequence[RunHistory]) -> list[str]:
    """Legend labels: each run's values of the config keys that differ between the runs.

    Three runs that differ only in their aggregator get ``aggregator=fedavg``,
    ``aggregator=median`` and so on; a component option that a run leaves to the
    component shows as ``NAME.KEY=default``, and a core key it leaves unset (such as
    ``attack``) as ``KEY=none``. A single run, or runs whose configs are the same,
    are named by their folder.
    """
    flats = [flat_config(run.config) for run in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    differing = [key for key in keys if len({_value(flat, key) for flat in flats}) > 1]
    if len(runs) == 1 or not differing:
        return [run.name for run in runs]
    return [", ".join(f"{key}={_value(flat, key)}" for key in differing) for flat in flats]


def _value(flat: Mapping[str, Any], key: str) -> str:
    if key in flat:
        return _text(flat[key])
    return "default" if "." in key else "none"  # an option left to its component; a core key


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """The rounds whose record holds a number under ``key``, and those numbers."""
    points = [
        (record["round"], float(record[key]))
        for record in records
        if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)
    ]
    return [r for r, _ in points], [v for _, v in points]


def plot_figure(plot: Plot, runs: Sequence[RunHistory], labels: Sequence[str]) -> Figure | None:
    """Draw ``plot.key`` per round, one line per run that records it; None if none does.

    Several runs get a legend of ``labels``.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for run, label in zip(runs, labels, strict=True):
        rounds, values = series(run.records, plot.key)
        if rounds:
            axes.plot(rounds, values, marker="o" if len(rounds) <= 30 else None, label=label)
    if not axes.lines:
        return None
    axes.set_title(plot.title)
    axes.set_xlabel("round")
    axes.set_ylabel(plot.ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if len(runs) > 1:
        axes.legend(fontsize="small")
    return figure


def csv_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A history as CSV: one row per round, one column per key of any round.

    Columns come in the order keys first appear. Numbers are written exactly (their
    JSON text), text as it is, nested values (client lists, per-client byte counts)
    as JSON text, and a key a round lacks (or ``null``) as an empty cell, so
    ``json.loads`` of a cell that is not text gives back the history's value.
    """
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(column)) for column in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def summary_markdown(
    runs: Sequence[RunHistory],
    labels: Sequence[str],
    plotted: Sequence[Plot],
    csv_files: Sequence[str],
) -> str:
    """A short Markdown summary: a row per run, the plots written and those left out."""
    labelled = list(labels) != [run.name for run in runs]
    headers = ["run", "config", "status", "rounds", "final accuracy", "epsilon", "seconds"]
    if not labelled:
        headers.remove("config")
    lines = ["# privfl report", ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for run, label in zip(runs, labels, strict=True):
        _, accuracy = series(run.records, "accuracy")
        _, epsilon = series(run.records, "epsilon")
        _, delta = series(run.records, "delta")
        _, seconds = series(run.records, "seconds")
        cells = [
            f"`{run.run_dir}`",
            *([label] if labelled else []),
            str(run.status.get("status", "unknown")),
            str(run.records[-1]["round"]),
            f"{accuracy[-1]:.4f}" if accuracy else "-",
            f"{epsilon[-1]:.4g} (delta {delta[-1]:g})" if epsilon and delta else "-",
            f"{sum(seconds):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"- {plot.title}: `{plot.name}.png`, `{plot.name}.svg`" for plot in plotted]
    skipped = [plot for plot in PLOTS if plot not in plotted]
    if skipped:
        lines += ["", "Not plotted:", ""]
        lines += [f"- {plot.title}: {plot.missing}." for plot in skipped]
    lines += ["", "## History as CSV", ""]
    lines += [f"- `{name}`" for name in csv_files]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Report:
    """Where :func:`write_report` wrote, the plots it drew and those it left out."""

    out_dir: Path
    plotted: list[Plot]
    skipped: list[Plot]


def require_matplotlib() -> None:
    """Raise a :class:`PrivflError` with the install line when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PrivflError(
            f"run reports need matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Report:
    """Write plots (PNG and SVG), ``summary.md`` and CSV histories of runs to ``out_dir``.

    One run's history goes to ``history.csv``, several runs' to
    ``history-RUN.csv`` each. Plot files of an earlier report in ``out_dir`` that this
    one leaves out are removed, so the folder never shows a stale plot.
    """
    require_matplotlib()
    runs = [load_run(run_dir) for run_dir in run_dirs]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("out", str(out_dir), "a folder (a file of that name is there)")
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs)
    plotted, skipped = [], []
    for plot in PLOTS:
        figure = plot_figure(plot, runs, labels)
        paths = [out_dir / f"{plot.name}.{suffix}" for suffix in ("png", "svg")]
        if figure is None:
            skipped.append(plot)
            for path in paths:
                path.unlink(missing_ok=True)
            continue
        for path in paths:
            _save(figure, path)
        plotted.append(plot)
    csv_names = _csv_names(runs)
    for run, name in zip(runs, csv_names, strict=True):
        (out_dir / name).write_text(csv_table(run.records))
    (out_dir / "summary.md").write_text(summary_markdown(runs, labels, plotted, csv_names))
    return Report(out_dir, plotted, skipped)


def _csv_names(runs: Sequence[RunHistory]) -> list[str]:
    if len(runs) == 1:
        return ["history.csv"]
    names: list[str] = []
    for run in runs:
        name, number = f"history-{run.name}.csv", 1
        while name in names:
            number += 1
            name = f"history-{run.name}-{number}.csv"
        names.append(name)
    return names


def _save(figure: Figure, path: Path) -> None:
    """Save ``figure``; the same runs give the same bytes (no date in the SVG, and its
    element ids hashed with a fixed salt instead of a random one)."""
    from matplotlib import rc_context

    metadata = {"Date": None} if path.suffix == ".svg" else {}
    with rc_context({"svg.hashsalt": "privfl-report"}):
        figure.savefig(path, dpi=DPI, metadata=metadata)
