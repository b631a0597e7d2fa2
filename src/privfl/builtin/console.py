"""Built-in console reporter: progress bars (rounds, and clients within a round) and a table.

Active when :meth:`privfl.Federation.run` is given a :class:`rich.console.Console`.
As rounds finish, a row per round is printed above the progress bar, laid out for
the console's width (80 columns fit a DP + SecAgg+ run):

- headers say what a value is and in which unit (``acc %``, ``s/round``, ``ε``,
  ``kB up/client``, ``kB down/client``), and numbers are formatted to their meaning
  (accuracy as a percentage, epsilon to 3 significant figures, kilobytes rounded,
  counts whole);
- settings that stay the same on every round (the clip norm, delta, the ring's bits,
  the kilobytes of the global model each client receives) are printed once above the
  table; one that changes (an adaptive clip norm) becomes a column from then on;
- counts of trouble (dropped, failed or rejected clients, clamped values) get a
  column once they are not zero;
- when the columns do not fit the width, the least essential ones are left out and
  named in a note (every value is in the run's ``history.jsonl``);
- text a plugin adds (such as why a round was aborted) is printed under its row.

``COLUMNS`` maps the keys that privfl's records carry to their header and format;
other numeric keys that plugins add get their key as header and a general format.
A change of the table's columns prints the header again. The table's state lives in
``federation.stash``, so the plugin keeps no state of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from privfl.plugins import hookimpl
from privfl.records import RoundRecord

_KEY = "privfl.console"
GAP = 2
"""Spaces between two columns."""


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _figures(value: float) -> str:
    """3 significant figures, without an exponent below a million (epsilon 1234, not 1.23e+03)."""
    return f"{value:.0f}" if 1000 <= abs(value) < 1e6 else f"{value:.3g}"


def _loss(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.4g}"


def _seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _count(value: Any) -> str:
    """A count: an integer, or the number of ids in a list or a {phase: ids} mapping."""
    if isinstance(value, Mapping):
        return str(sum(len(ids) if isinstance(ids, (list, tuple)) else 1 for ids in value.values()))
    if isinstance(value, (list, tuple)):
        return str(len(value))
    return f"{value:.0f}"


def _general(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


@dataclass(frozen=True)
class Column:
    """How the table shows one key of a round's record."""

    header: str
    """The column's header: short, with its unit."""
    format: Callable[[Any], str]
    """The value as text, to the precision that means something."""
    width: int = 6
    """Characters the values need (the header may be wider)."""
    priority: int = 5
    """0: always shown; the larger, the sooner left out on a narrow console."""
    label: str | None = None
    """The name in prose (settings line, summaries); default: the header."""
    unit: str = ""
    """Appended to the value in prose, such as ``" %"``."""
    setting: bool = False
    """Shown once above the table while it keeps its first value."""
    sparse: bool = False
    """A count that gets its column only once it is not zero."""

    def describe(self, value: Any) -> str:
        """The value with its name and unit, such as ``accuracy 91.2 %``."""
        return f"{self.label or self.header} {self.format(value)}{self.unit}"


COLUMNS: dict[str, Column] = {
    "round": Column("round", str, 5, 0),
    "accuracy": Column("acc %", _percent, 5, 0, label="accuracy", unit=" %"),
    "loss": Column("loss", _loss, 6, 1),
    "epsilon": Column("ε", _figures, 5, 0),
    "train_loss": Column("train loss", _loss, 6, 4),
    "seconds": Column("s/round", _seconds, 5, 2, label="seconds", unit=" s"),
    "secagg_kb_sent_per_client": Column(
        "kB up/client", lambda v: f"{v:.0f}", 6, 2, label="secagg upload", unit=" kB/client"
    ),
    "secagg_contributors": Column("in sum", _count, 4, 3, label="clients in the secure sum"),
    "secagg_dropped": Column("dropped", _count, 4, 3, label="clients dropped", sparse=True),
    "failed": Column("failed", _count, 4, 3, label="clients failed", sparse=True),
    "rejected": Column("rejected", _count, 4, 3, label="updates rejected", sparse=True),
    "malicious": Column("malicious", _count, 4, 4, label="malicious clients"),
    "secagg_clamped": Column("clamped", _count, 4, 3, label="values clamped", sparse=True),
    "secagg_seconds": Column("secagg s", _seconds, 5, 5, label="secagg seconds", unit=" s"),
    "clip": Column("clip", _figures, 5, 3, label="clip norm", setting=True),
    "delta": Column("δ", lambda v: f"{v:g}", 6, 3, setting=True),
    "secagg_ring_bits": Column(
        "ring bits", str, 3, 3, label="secagg ring", unit=" bits", setting=True
    ),
    "secagg_bound": Column("bound", _figures, 5, 3, label="secagg value bound", setting=True),
    "downlink_bytes": Column(
        "kB down/client",
        lambda v: _figures(v / 1000),
        6,
        3,
        label="downlink",
        unit=" kB/client",
        setting=True,
    ),
}
"""Header and format of the keys privfl's records carry (metrics, record fields and the
values of the built-in mechanisms), in the table's order."""

UNKNOWN_PRIORITY = 6
"""Plugins' numeric values are left out before any known column."""


def column(key: str) -> Column:
    """The column of ``key``: from :data:`COLUMNS`, or a general one for a plugin's key."""
    known = COLUMNS.get(key)
    if known is not None:
        return known
    header = key.replace("_", " ")
    return Column(header, _general, 7, UNKNOWN_PRIORITY)


def describe(key: str, value: Any) -> str:
    """``key``'s value in prose with its unit, such as ``accuracy 91.2 %`` or ``ε 3.02``."""
    return column(key).describe(value)


def record_values(record: RoundRecord) -> dict[str, Any]:
    """Everything the table may show of a record, by key (record fields, metrics, values)."""
    values: dict[str, Any] = {"round": record.round, **record.metrics}
    values["train_loss"] = record.train_loss
    values["seconds"] = record.seconds
    values["rejected"] = record.rejected
    values.update(record.values)
    return values


def _shown(key: str, value: Any) -> bool:
    """Whether ``value`` can be a cell: a number, or a count of a known key."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return key in COLUMNS and COLUMNS[key].format is _count and isinstance(value, (list, dict))


@dataclass
class Table:
    """The per-round table of one session: its columns, settings and what was left out."""

    console: Console
    keys: tuple[str, ...] = ()
    """Keys with a column (some may be left out for width)."""
    settings: dict[str, Any] | None = None
    left_out: tuple[str, ...] = ()

    def add(self, record: RoundRecord, final: bool) -> None:
        """Print ``record``'s row, after the settings and header if they changed."""
        values = record_values(record)
        first = self.settings is None
        settings = dict(self.settings or {})
        keys = list(self.keys)
        for key, value in values.items():
            if not _shown(key, value) or key in keys:
                continue
            spec = column(key)
            if spec.setting and (key not in settings or settings[key] == value):
                settings[key] = value
            elif spec.sparse and _count(value) == "0":
                continue
            elif final and key in record.metrics and not first:
                continue  # a metric of the last round only (final_only) is the summary's
            else:
                keys.append(key)
                settings.pop(key, None)  # a setting that changed
        if first or tuple(keys) != self.keys:
            if set(settings) - set(self.settings or {}):
                order = list(COLUMNS)
                named = [describe(k, settings[k]) for k in sorted(settings, key=order.index)]
                self._print("every round: " + " · ".join(named), "dim", wrap=True)
            self.settings = settings
            self._layout(keys)
        cells = [self._cell(key, values.get(key)) for key in self.keys if key not in self.left_out]
        self._print((" " * GAP).join(cells), None)
        for key, value in values.items():
            if isinstance(value, str):
                self._print(f"  round {record.round} {key}: {value}", "yellow", wrap=True)

    def _layout(self, keys: list[str]) -> None:
        """Choose the columns that fit the width, most essential first; print the header."""
        order = list(COLUMNS)
        keys.sort(key=lambda k: order.index(k) if k in order else len(order))
        budget = self.console.width + GAP
        kept: set[str] = set()
        for key in sorted(keys, key=lambda k: column(k).priority):
            need = self._width(key) + GAP
            if need <= budget:
                kept.add(key)
                budget -= need
        self.keys = tuple(keys)
        self.left_out = tuple(k for k in keys if k not in kept)
        if self.left_out:
            names = ", ".join(column(k).header for k in self.left_out)
            note = f"left out at {self.console.width} columns: {names} (all in history.jsonl)"
            self._print(note, "dim", wrap=True)
        headers = [column(k).header.rjust(self._width(k)) for k in keys if k in kept]
        self._print((" " * GAP).join(headers), "bold")

    def _width(self, key: str) -> int:
        spec = column(key)
        return max(len(spec.header), spec.width)

    def _cell(self, key: str, value: Any) -> str:
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return ("-" if missing else column(key).format(value)).rjust(self._width(key))

    def _print(self, text: str, style: str | None, wrap: bool = False) -> None:
        """Print a line of plain text; rows and headers never wrap (cut with … instead)."""
        self.console.print(
            text,
            style=style,
            markup=False,
            highlight=False,
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
        )


@hookimpl
def privfl_session_start(federation, start_round: int, total_rounds: int) -> None:
    if federation.console is None:
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=federation.console,
        transient=True,
    )
    task = progress.add_task("rounds", total=total_rounds, completed=start_round - 1)
    clients = progress.add_task("clients", total=None, visible=False)
    federation.stash[_KEY] = {
        "progress": progress,
        "task": task,
        "clients": clients,
        "table": Table(federation.console),
    }
    progress.start()


@hookimpl
def privfl_round_progress(federation, round: int, done: int, total: int) -> None:
    state = federation.stash.get(_KEY)
    if state is not None:
        state["progress"].update(
            state["clients"],
            description=f"round {round} clients",
            completed=done,
            total=total,
            visible=done < total,
        )


@hookimpl
def privfl_round_finish(federation, record) -> None:
    state = federation.stash.get(_KEY)
    if state is None:
        return
    state["table"].add(record, final=record.round == federation.total_rounds)
    state["progress"].advance(state["task"])


@hookimpl
def privfl_session_finish(federation) -> None:
    state = federation.stash.pop(_KEY, None)
    if state is not None:
        state["progress"].stop()
