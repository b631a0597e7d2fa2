"""``privfl report``: plots, summary and CSV of run folders; ``privfl run --report``."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from privfl.app.report import (
    DPI,
    FIGSIZE,
    PLOTS,
    RunHistory,
    csv_table,
    load_run,
    plot_figure,
    run_labels,
)
from privfl.cli.main import main

FAST = ["--model", "2nn", "--clients", "20", "--clients-per-round", "5", "--rounds", "3"]
DP_SECAGG = ["--dp", "--dp-noise", "0.5", "--secagg", "secagg"]
AGGREGATORS = ("fedavg", "median", "trimmed-mean")
PIXELS = (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))  # rows, columns


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A DP + SecAgg run and three runs that differ only in their aggregator."""
    root = tmp_path_factory.mktemp("runs")
    folders = {"dp-secagg": root / "dp-secagg"}
    assert main(["run", *FAST, *DP_SECAGG, "--run-dir", str(folders["dp-secagg"])]) == 0
    for aggregator in AGGREGATORS:
        folders[aggregator] = root / aggregator
        assert (
            main(["run", *FAST, "--aggregator", aggregator, "--run-dir", str(root / aggregator)])
            == 0
        )
    return folders


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def assert_images(folder: Path, names: list[str]) -> None:
    for name in names:
        image = imread(folder / f"{name}.png")
        assert image.shape[:2] == PIXELS, name
        assert image.std() > 0, f"{name}.png is blank"
        assert (folder / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_report_of_a_dp_secagg_run_plots_every_quantity(runs, capsys):
    run_dir = runs["dp-secagg"]
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    report = run_dir / "report"
    assert f"report written to {report}" in out
    names = ["accuracy", "loss", "epsilon", "bytes-per-client", "seconds"]
    assert_images(report, names)
    records = history(run_dir)
    (run,) = [load_run(run_dir)]
    for plot in [plot for plot in PLOTS if plot.name in names]:
        figure = plot_figure(plot, [run], [run.name])
        assert figure is not None
        (line,) = figure.axes[0].lines
        assert list(line.get_xdata()) == [1, 2, 3]
        assert list(line.get_ydata()) == [r[plot.key] for r in records]
        assert figure.axes[0].get_legend() is None  # one run: no legend
    summary = (report / "summary.md").read_text()
    assert f"{records[-1]['accuracy']:.4f}" in summary
    assert f"{records[-1]['epsilon']:.4g} (delta 1e-05)" in summary
    for plot in PLOTS:  # what a DP + SecAgg classification run does not record
        assert (plot.missing in summary) == (plot.name not in names)


def test_compressed_and_regression_runs_get_their_own_curves(tmp_path):
    records = [
        {"round": r, "uplink_bytes": 1000.0 * r, "mse": 1 / r, "r2": 1 - 1 / r, "seconds": 0.1}
        for r in (1, 2, 3)
    ]
    run = RunHistory(tmp_path, {"dataset": "diabetes"}, records)
    for name in ("uplink-bytes", "mse", "r2"):
        (plot,) = [plot for plot in PLOTS if plot.name == name]
        figure = plot_figure(plot, [run], [run.name])
        assert figure is not None
        (line,) = figure.axes[0].lines
        assert list(line.get_ydata()) == [r[plot.key] for r in records]


def test_history_csv_round_trips(runs, capsys):
    run_dir = runs["dp-secagg"]
    assert main(["report", str(run_dir), "--out", str(run_dir / "csv-check")]) == 0
    with (run_dir / "csv-check" / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = history(run_dir)
    assert list(rows[0]) == list(dict.fromkeys(key for record in records for key in record))
    assert any(isinstance(value, str) for value in records[0].values())  # the accountant
    for row, record in zip(rows, records, strict=True):
        for key, cell in row.items():  # a key a round lacks: an empty cell; text as it is
            if key not in record:
                assert cell == ""
            elif isinstance(record[key], str):
                assert cell == record[key]
            else:
                assert json.loads(cell) == record[key]


def test_three_aggregators_overlay_with_a_legend_of_what_differs(runs, tmp_path, capsys):
    folders = [runs[name] for name in AGGREGATORS]
    out = tmp_path / "compare"
    assert main(["report", *map(str, folders), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    loaded = [load_run(folder) for folder in folders]
    labels = run_labels(loaded)
    assert labels == [f"aggregator={name}" for name in AGGREGATORS]
    plotted = ["accuracy", "loss", "seconds"]
    assert_images(out, plotted)
    for plot in PLOTS:
        figure = plot_figure(plot, loaded, labels)
        if plot.name not in plotted:
            assert figure is None
            assert not (out / f"{plot.name}.png").exists()
            assert f"not plotted: {plot.name}" in printed
            continue
        assert figure is not None
        axes = figure.axes[0]
        assert len(axes.lines) == 3
        assert [text.get_text() for text in axes.get_legend().get_texts()] == labels
        svg = (out / f"{plot.name}.svg").read_text()
        assert all(f"<!-- {label} -->" in svg for label in labels)  # legend text, drawn
    summary = (out / "summary.md").read_text()
    assert "| aggregator=median |" in summary
    assert "- Privacy spent: no run records epsilon" in summary
    for folder in folders:
        assert (out / f"history-{folder.name}.csv").is_file()


def test_the_same_runs_give_the_same_files(runs, tmp_path, capsys):
    for out in ("first", "second"):
        assert main(["report", str(runs["median"]), "--out", str(tmp_path / out)]) == 0
    first = sorted((tmp_path / "first").iterdir())
    assert len(first) == 3 * 2 + 2  # accuracy, loss, seconds; history.csv, summary.md
    for path in first:
        assert path.read_bytes() == (tmp_path / "second" / path.name).read_bytes(), path.name


def test_a_new_report_removes_plots_the_old_one_had(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs["dp-secagg"]), "--out", str(out)]) == 0
    assert (out / "epsilon.png").is_file()
    assert main(["report", str(runs["fedavg"]), "--out", str(out)]) == 0
    assert not (out / "epsilon.png").exists()
    assert not (out / "epsilon.svg").exists()


def test_labels_name_component_options_and_fall_back_to_folder_names(tmp_path):
    def run(name: str, config: dict) -> RunHistory:
        return RunHistory(tmp_path / name, config, [{"round": 1}])

    base = {"model": "2nn", "mechanisms": ["dp"], "run_dir": "x", "dp": {"clip": 1.0}}
    noisier = {**base, "run_dir": "y", "dp": {"clip": 1.0, "noise_multiplier": 2.0}}
    assert run_labels([run("a", base), run("b", noisier)]) == [
        "dp.noise_multiplier=default",
        "dp.noise_multiplier=2.0",
    ]
    both = {**noisier, "mechanisms": ["dp", "secagg"]}
    assert run_labels([run("a", noisier), run("b", both)]) == [
        "mechanisms=dp",
        "mechanisms=dp+secagg",
    ]
    assert run_labels([run("a", base), run("b", {**base, "run_dir": "z", "report": True})]) == [
        "a",
        "b",
    ]
    attacked = {**base, "attack": "sign-flip"}
    assert run_labels([run("a", base), run("b", attacked)]) == ["attack=none", "attack=sign-flip"]


def test_csv_leaves_missing_and_null_values_empty():
    table = csv_table([{"round": 1, "loss": None}, {"round": 2, "accuracy": 0.5, "why": "late"}])
    assert table.splitlines() == ["round,loss,accuracy,why", "1,,,", "2,,0.5,late"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "a run folder holding config.toml"),
        (
            lambda d: (d / "config.toml").write_text('model = "2nn"\n'),
            "at least one finished round",
        ),
        (
            lambda d: [
                (d / "config.toml").write_text("x = 1\n"),
                (d / "history.jsonl").write_text('{"round": 1}\n{bad\n{"round": 3}\n'),
            ],
            "history.jsonl' is not allowed: one JSON record with a round number per line",
        ),
        (
            lambda d: (d / "config.toml").write_bytes(b"\xff\x00"),
            "config.toml' is not allowed: valid TOML",
        ),
    ],
    ids=["not-a-run", "empty-history", "broken-history", "broken-config"],
)
def test_a_folder_that_is_not_a_finished_run_exits_2(tmp_path, capsys, make, message):
    make(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("error: ")
    assert message in out
    assert "Traceback" not in out


def test_several_runs_need_an_output_folder(runs, tmp_path, capsys):
    assert main(["report", str(runs["fedavg"]), str(runs["median"])]) == 2
    assert "add --out DIR" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    assert main(["report", str(runs["fedavg"]), "--out", str(tmp_path / "file")]) == 2
    assert "out = " in capsys.readouterr().out


def test_without_matplotlib_report_exits_2_with_the_install_line(
    runs, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["report", str(runs["fedavg"]), "--out", str(tmp_path / "r")]) == 2
    assert "pip install 'privfl[report]'" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_run_with_report_writes_it_at_the_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", *FAST, "--report", "--run-dir", str(run_dir)]) == 0
    assert re.search(r"│ report +│ /", capsys.readouterr().out)  # a row of the summary table
    assert_images(run_dir / "report", ["accuracy", "loss", "seconds"])
    assert "report = true" in (run_dir / "config.toml").read_text()
    rows = (run_dir / "report" / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 3


def test_run_with_report_but_no_matplotlib_is_refused_before_it_starts(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["run", *FAST, "--report", "--run-dir", str(tmp_path / "run")]) == 2
    assert "pip install 'privfl[report]'" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
