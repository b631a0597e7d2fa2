"""The ``privfl`` command: run folders, bad input, determinism (kills: test_run_folder.py)."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from privfl.algorithms.models import TwoNN
from privfl.app.config import load_toml
from privfl.cli.main import build_parser, main, parse_options
from privfl.errors import ConfigError

FAST = ["--model", "2nn", "--clients", "20", "--clients-per-round", "5", "--rounds", "3"]


def privfl_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "privfl.cli.main", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_run_writes_a_complete_run_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", *FAST, "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out
    assert "final accuracy" in out
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.safetensors",
        "config.toml",
        "history.jsonl",
        "model.safetensors",
        "run.lock",
        "status.json",
    ]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["round"] for r in history] == [1, 2, 3]
    for record in history:
        assert {"round", "accuracy", "loss", "seconds", "clients"} <= set(record)
        assert len(record["clients"]) == 5
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    config = (run_dir / "config.toml").read_text()
    assert 'model = "2nn"' in config
    assert f'run_dir = "{run_dir}"' in config
    TwoNN().load_state_dict(load_file(run_dir / "model.safetensors"))


def test_same_seed_writes_identical_models(tmp_path, capsys):
    for name in ("a", "b"):
        assert main(["run", *FAST, "--seed", "3", "--run-dir", str(tmp_path / name)]) == 0
    assert main(["run", *FAST, "--seed", "4", "--run-dir", str(tmp_path / "c")]) == 0
    model = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert model["a"] == model["b"]
    assert model["a"] != model["c"]


def test_config_file_with_flag_overrides(tmp_path, capsys):
    config = tmp_path / "job.toml"
    config.write_text(
        'model = "2nn"\nclients = 20\nrounds = 5\n'
        "[uniform]\nclients_per_round = 4\n"
        "[plaintext]\nbatch_size = 128\n"
    )
    run_dir = tmp_path / "run"
    flags = ["--rounds", "2", "--clients-per-round", "5", "--run-dir", str(run_dir)]
    assert main(["run", str(config), *flags]) == 0
    written = load_toml(run_dir / "config.toml")
    assert written["rounds"] == 2
    assert written["uniform"] == {"clients_per_round": 5}
    assert written["plaintext"] == {"batch_size": 128}
    history = (run_dir / "history.jsonl").read_text().splitlines()
    assert all(len(json.loads(line)["clients"]) == 5 for line in history)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--aggregator", "fedavgg"], "aggregator = 'fedavgg' is not allowed: choose one of"),
        (["--clients-per-round", "30"], "clients_per_round = 30 is not allowed: at most"),
        (["--partition", "dirichlet", "--alpha", "0"], "dirichlet.alpha = 0.0 is not allowed"),
        (["--partition", "dirichlet", "--alpha", "-1"], "dirichlet.alpha = -1.0 is not allowed"),
        (["--alpha", "0.3"], "--alpha = 0.3 is not allowed: a flag of partition dirichlet"),
        (["--dropout", "0.3"], "a flag of mechanism secagg, mechanism secagg+, which this run"),
        (["--option", "nosuch.key=1"], "table [nosuch] = {'key': 1} is not allowed"),
        (["--option", "unifrom.clients_per_round=3"], "did you mean [uniform]?"),
        (["--option", "secagg.dropout=0.1"], "add it to mechanisms"),
        (["--option", "plaintext.batch_size=three"], "= 'three' is not allowed: an int"),
        (["--mechanism", "dpp"], "mechanism = 'dpp' is not allowed"),
        (["--rounds", "0"], "rounds = 0 is not allowed: an integer >= 1"),
        (["--clients", "20000"], "clients = 20000 is not allowed: at most 10000"),
        (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
        (["--option", "plaintext.bogus=1"], "plaintext.bogus = 1 is not allowed"),
        (["--option", "plaintext.batch_sise=1"], "did you mean 'batch_size'?"),
        (["--option", "nodot"], "NAME.KEY=VALUE"),
        (["--lr", "1e300"], "lr = 1e+300 is not allowed: a finite number > 0 (at most 3.4e38"),
        (["--proximal-mu", "1e39"], "proximal_mu = 1e+39 is not allowed"),
    ],
)
def test_bad_input_exits_2_before_creating_the_run_folder(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    argv = ["run", *FAST, *flags, "--run-dir", str(run_dir)]
    assert main(argv) == 2
    output = capsys.readouterr().out.replace("\n", " ")
    assert "error:" in output
    assert message in output
    assert not run_dir.exists()


def test_malformed_idx_file_is_reported_without_traceback(tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (data / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02\x01")
    proc = privfl_cli("run", "--data-dir", str(data), "--run-dir", "out", cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "error:" in out
    assert "train-images-idx3-ubyte" in out
    assert "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    assert main(["run", *FAST, "--run-dir", str(run_dir)]) == 2
    assert "privfl resume" in capsys.readouterr().out
    assert (run_dir / "keep.txt").read_text() == "mine"


def test_resuming_a_complete_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", *FAST, "--run-dir", str(run_dir)]) == 0
    assert main(["resume", str(run_dir)]) == 2
    assert "rounds left to run" in capsys.readouterr().out


def test_plugins_command_lists_hooks_and_components(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "privfl.builtin.aggregators" in out
    assert "privfl_register_aggregators" in out
    assert "aggregator fedavg" in out
    assert "built-in" in out


def test_parse_options_reads_toml_values():
    assert parse_options(["plaintext.batch_size=500", "x.name=abc", "x.flag=true"]) == {
        "plaintext": {"batch_size": 500},
        "x": {"name": "abc", "flag": True},
    }
    with pytest.raises(ConfigError, match=r"NAME\.KEY=VALUE"):
        parse_options(["=3"])


def test_a_config_path_that_is_a_folder_or_a_run_dir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "taken").write_text("a file")
    assert main(["run", str(tmp_path / "folder.toml")]) == 2
    assert "a readable TOML file" in capsys.readouterr().out
    assert main(["run", *FAST, "--run-dir", str(tmp_path / "taken")]) == 2
    assert "a folder (a file of that name is there)" in capsys.readouterr().out
    assert (tmp_path / "taken").read_text() == "a file"


def test_python_dash_m_privfl_is_the_command_and_the_package_is_typed():
    result = subprocess.run(
        [sys.executable, "-m", "privfl", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("privfl ")
    import privfl

    assert (Path(privfl.__file__).parent / "py.typed").is_file()


def test_python_dash_m_privfl_help_lists_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "privfl", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: privfl")
    for command in ("run", "resume", "evaluate", "plugins"):
        assert f"\n    {command} " in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--round", "3"], "privfl run: unknown flag --round; did you mean --rounds?"),
        (["run", "--dp-clp=2"], "privfl run: unknown flag --dp-clp; did you mean --dp-clip?"),
        (["run", "--rounds", "2", "--no-such-flag"], "privfl run: unknown flag --no-such-flag\n"),
        (["rnu"], "privfl: unknown command rnu; did you mean run?"),
        (["evaluate", "x", "--backnd", "smpc"], "unknown flag --backnd; did you mean --backend?"),
    ],
)
def test_a_misspelt_flag_or_command_names_the_closest_and_exits_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--run-dir", str(tmp_path / "run")] if argv[0] == "run" else argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "see `privfl" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--round", "3"], "privfl run: unknown flag --round;"),
        (["run", "--dp-cl", "2"], "privfl run: unknown flag --dp-cl;"),
        (["--vers", "plugins"], "privfl: unknown flag --vers; did you mean --version?"),
    ],
)
def test_flags_are_never_abbreviated(tmp_path, capsys, argv, message):
    if argv[0] == "run":  # were it taken, the run would be short and leave its folder
        argv = [*argv, *FAST, "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def run_help() -> str:
    """The help text of ``privfl run``, 100 columns wide."""
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    run = commands.choices["run"]
    run.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    return run.format_help()


def help_sections(text: str) -> dict[str, str]:
    """The sections of a --help text by title ("privacy:" -> its lines)."""
    sections: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
        sections[title] = sections.get(title, "") + line + "\n"
    return sections


def test_run_help_groups_flags_by_concern():
    sections = help_sections(run_help())
    concerns = ["data", "training", "aggregation", "privacy", "secure aggregation"]
    concerns += ["evaluation", "output"]
    titles = [title for title in sections if title in concerns]
    assert titles == concerns  # present, in this order
    expected = {
        "data": ["--dataset", "--partition", "--alpha"],
        "training": ["--rounds", "--lr", "--clients-per-round"],
        "aggregation": ["--aggregator", "--trim-fraction", "--server-lr"],
        "privacy": ["--dp ", "--dp-clip", "--delta", "--accountant"],
        "secure aggregation": ["--secagg", "--dropout"],
        "evaluation": ["--eval ", "--eval-every"],
        "output": ["--executor", "--workers", "--run-dir", "--quiet", "--verbose"],
    }
    for title, flags in expected.items():
        for flag in flags:
            assert flag in sections[title], f"{flag} is not under {title}"
            others = [t for t in concerns if t != title]
            assert not any(f"  {flag.strip()} " in sections[t] for t in others), flag


def test_every_builtin_flag_of_run_has_a_concern():
    assert "other options" not in help_sections(run_help())


def test_quiet_prints_warnings_and_one_summary_line(tmp_path, capsys):
    argv = ["run", *FAST, "--quiet", "--dp", "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings
    summary = [line for line in lines if line.startswith("privfl run: rounds 3 · final loss")]
    assert len(summary) == 1
    assert "epsilon" in summary[0]
    assert not [line for line in lines if line.split()[:1] == ["round"]]  # no table


def test_verbose_logs_the_library_at_debug_level(tmp_path, capsys):
    import logging

    logger = logging.getLogger("privfl")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert main(["run", *FAST, "--verbose", "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "new run in" in err
    assert "checkpoint written" in err
    assert main(["run", *FAST, "--run-dir", str(tmp_path / "quiet")]) == 0
    assert "new run in" not in capsys.readouterr().err
    names = [h.get_name() for h in logger.handlers]
    assert names.count("privfl.cli") == 1  # main() replaces its handler, never stacks them


def test_every_required_dependency_is_imported_by_the_package():
    """A required dependency that src/ never imports is dead weight for every user
    (torchvision was one)."""
    import ast
    import importlib.metadata as metadata
    import re

    from privfl.app.config import tomllib

    root = Path(__file__).resolve().parent.parent
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    required = {
        re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        for spec in pyproject["project"]["dependencies"]
        if "python_version" not in spec or sys.version_info < (3, 11)
    }
    imported = set()
    for path in (root / "src" / "privfl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    distributions = metadata.packages_distributions()
    used = {
        dist.lower().replace("_", "-") for name in imported for dist in distributions.get(name, [])
    }
    assert required - used == set()


def test_help_texts_from_docstrings_print_as_plain_words():
    from privfl.cli.arguments import plain_help

    text = plain_help("see :mod:`~privfl.builtin.accountants`, ``--dp-clip``; 8% to 87%")
    assert text == "see privfl.builtin.accountants, --dp-clip; 8%% to 87%%"
    assert text % {} == "see privfl.builtin.accountants, --dp-clip; 8% to 87%"  # as argparse


def test_a_flag_that_components_read_differently_gives_each_meaning(capsys):
    """--compress-bits is QSGD's signed bits and shared-grid's unsigned ones."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    bits = text[text.index("--compress-bits BITS qsgd.bits:") :]
    assert "sign included (2 to 16)" in bits[: bits.index("shared-grid.bits:")]
    assert "(1 to 16)" in bits[bits.index("shared-grid.bits:") : bits.index("--compress-fraction")]


def test_quiet_evaluate_prints_its_scores_as_one_line(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["run", *FAST, "--rounds", "1", "--quiet", "--run-dir", run_dir]) == 0
    capsys.readouterr()
    assert main(["evaluate", run_dir, "--limit", "100", "--quiet"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("privfl evaluate (plaintext): ")
    assert " %" in line  # accuracy as a percentage
    assert "evaluation-plaintext.json" in line
