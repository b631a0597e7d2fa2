"""The per-round console table: headers with units, settings once, fitting the width."""

from __future__ import annotations

import io
import warnings

import pytest
from rich.console import Console

from privfl.app.config import make_config
from privfl.app.runner import execute, start_run
from privfl.builtin.console import Table, describe
from privfl.errors import PrivacyWarning, UtilityWarning
from privfl.records import RoundRecord

SECAGG_VALUES = {
    "secagg_clamped": 0,
    "secagg_ring_bits": 32,
    "secagg_bound": 1.0000009536743164,
    "secagg_seconds": 0.02724406400011503,
    "secagg_contributors": 10,
    "secagg_dropped": {},
    "secagg_kb_sent_per_client": 797.905,
    "secagg_bytes_sent": {"1": 797905, "3": 797905},
    "secagg_bytes_received": {"1": 982, "3": 982},
}
"""The values a round of ``privfl run --dp --secagg secagg+`` records (from its history)."""


def record(round: int = 1, **values) -> RoundRecord:
    """A round of a DP + SecAgg+ run, with ``values`` added or replaced."""
    dp = {"epsilon": 10.109561939497233 + round, "delta": 1e-05, "clip": 1.0}
    return RoundRecord(
        round=round,
        clients=list(range(10)),
        num_examples=5000,
        train_loss=1.4989599466323853,
        seconds=0.358873,
        metrics={"loss": 6.114016771316528, "accuracy": 0.121},
        values={**SECAGG_VALUES, **dp, **values},
    )


def printed(width: int, *records: RoundRecord) -> list[str]:
    """The lines the table prints for ``records`` on a console ``width`` columns wide."""
    out = io.StringIO()
    table = Table(Console(width=width, file=out))
    for number, item in enumerate(records, start=1):
        table.add(item, final=number == len(records))
    return out.getvalue().splitlines()


def header_of(lines: list[str]) -> list[str]:
    """The table's header lines (a record's text value prints as "round N key: value")."""
    return [line for line in lines if line.split()[:2] == ["round", "acc"]]


def cell(header: str, row: str, name: str) -> str:
    """The cell of column ``name`` in ``row`` (cells are right-aligned under headers)."""
    end = header.index(name) + len(name)
    return row[:end].split()[-1]


def test_dp_secagg_plus_run_prints_rows_that_fit_80_columns(tmp_path):
    config = make_config(
        {
            "model": "2nn",
            "clients": 20,
            "rounds": 2,
            "mechanisms": ["dp", "secagg+"],
            "run_dir": str(tmp_path / "run"),
        }
    )
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        warnings.simplefilter("ignore", UtilityWarning)
        run = start_run(config)
        execute(run, console=Console(width=80, file=out))
    lines = out.getvalue().splitlines()
    assert lines, "the console printed nothing"
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    (header,) = header_of(lines)
    assert header.split()[:4] == ["round", "acc", "%", "loss"]
    assert "ε" in header.split()
    assert "kB up/client" in header
    rows = [line for line in lines if line.split()[:1] in (["1"], ["2"])]
    assert len(rows) == 2
    assert all(cell(header, row, "ε") for row in rows)
    assert "clip norm 1" in out.getvalue()
    assert "δ 1e-05" in out.getvalue()


def test_settings_are_printed_once_above_the_header_and_numbers_by_meaning():
    lines = printed(80, record(1), record(2), record(3))
    settings = [line for line in lines if line.startswith("every round:")]
    assert settings == [
        "every round: clip norm 1 · δ 1e-05 · secagg ring 32 bits · secagg value bound 1"
    ]
    assert lines.index(settings[0]) < lines.index(header_of(lines)[0])
    assert len(header_of(lines)) == 1
    header = header_of(lines)[0]
    assert "clip" not in header.split()
    assert "δ" not in header
    assert "bits" not in header
    first = lines[-3]
    assert cell(header, first, "round") == "1"
    assert cell(header, first, "acc %") == "12.1"  # 0.121 as a percentage
    assert cell(header, first, "ε") == "11.1"  # 3 significant figures
    assert cell(header, first, "loss") == "6.114"
    assert cell(header, first, "s/round") == "0.36"
    assert cell(header, first, "kB up/client") == "798"  # 797.905 kB, rounded
    assert cell(header, first, "in sum") == "10"  # clients in the secure sum, a count
    assert all(len(line) <= 80 for line in lines)


def test_a_setting_that_changes_becomes_a_column():
    lines = printed(80, record(1), record(2, clip=0.8312), record(3, clip=0.7))
    headers = header_of(lines)
    assert len(headers) == 2
    assert "clip" not in headers[0].split()
    assert "clip" in headers[1].split()
    assert cell(headers[1], lines[-2], "clip") == "0.831"
    assert cell(headers[1], lines[-1], "clip") == "0.7"
    assert lines.index(headers[1]) == len(lines) - 3


def test_counts_of_trouble_get_a_column_once_not_zero():
    lines = printed(80, record(1), record(2, secagg_dropped={"masked_input": [3, 5]}))
    headers = header_of(lines)
    assert "dropped" not in headers[0]
    assert "dropped" in headers[1]
    assert cell(headers[1], lines[-1], "dropped") == "2"


def test_a_narrow_console_leaves_out_the_least_essential_columns_and_says_so():
    lines = printed(50, record(1), record(2))
    assert all(len(line) <= 50 for line in lines), "\n".join(lines)
    header = header_of(lines)[0]
    assert header.split()[:3] == ["round", "acc", "%"]
    assert "ε" in header.split()
    note = " ".join(line for line in lines if not header_of([line]))
    assert "left out at 50 columns" in note
    assert "secagg s" in note
    assert "history.jsonl" in note
    assert "secagg s" not in header


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_no_line_is_wider_than_the_console(width):
    lines = printed(width, record(1), record(2, clip=0.5), record(3, failed={"7": "timeout"}))
    assert all(len(line) <= width for line in lines), "\n".join(lines)


def test_plugin_values_get_a_general_column_and_text_a_note():
    lines = printed(100, record(1, my_score=0.123456, aborted="too few clients left"))
    header = header_of(lines)[0]
    assert cell(header, lines[-2], "my score") == "0.1235"
    assert lines[-1] == "  round 1 aborted: too few clients left"


def test_rounds_without_evaluation_show_a_dash():
    unevaluated = record(2)
    unevaluated.metrics = {}
    lines = printed(80, record(1), unevaluated, record(3))
    header = header_of(lines)[0]
    assert cell(header, lines[-2], "acc %") == cell(header, lines[-2], "loss") == "-"
    assert cell(header, lines[-1], "acc %") == "12.1"


def test_describe_names_the_value_with_its_unit():
    assert describe("accuracy", 0.9123) == "accuracy 91.2 %"
    assert describe("epsilon", 3.0178) == "ε 3.02"
    assert describe("epsilon", 1234.4) == "ε 1234"
    assert describe("secagg_kb_sent_per_client", 797.9) == "secagg upload 798 kB/client"
    assert describe("my_plugin_value", 3) == "my plugin value 3"


def test_a_metric_of_the_last_round_only_is_left_to_the_summary():
    last = record(2)
    last.metrics = {**last.metrics, "smpc_accuracy": 0.9}
    lines = printed(100, record(1), last)
    assert len(header_of(lines)) == 1
    assert "smpc" not in "\n".join(lines)
