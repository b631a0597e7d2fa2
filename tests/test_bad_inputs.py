"""A table of bad inputs to ``privfl run``: every one exits 2 with one line, writing nothing.

The table is generated from what the command declares: every flag of ``privfl run``
(the RunConfig fields and every flag a registered component declares, the latter with
its component chosen) gets values of the wrong type, non-finite numbers and negative
numbers, and every name-valued flag an unknown name. Flags that plugins add are
covered the day they are registered. Each case must exit with status 2 and an
``error:`` line that names the flag's key and the value, before the run folder
exists: nothing trained, nothing written. A few hand-written cases (config files,
``--option`` syntax) join them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import privfl.data
from privfl.app.config import component_flags, config_fields
from privfl.cli.main import main
from privfl.plugins import get_plugin_manager

FAST = ["--model", "2nn", "--clients", "20", "--sampler", "all", "--rounds", "1"]

CHOOSE = {
    "mechanism": "--mechanism",
    "partition": "--partition",
    "sampler": "--sampler",
    "aggregator": "--aggregator",
    "server_optimizer": "--server-opt",
    "executor": "--executor",
    "dataset": "--dataset",
}
"""The flag that chooses a component of each kind (a component flag needs its owner)."""

NEEDS = {"csv": ["--data-dir", str(Path(privfl.data.__file__).parent / "diabetes")]}
"""What a component needs besides the flag under test (the csv dataset: a folder)."""

BAD_VALUES = {
    "int": ["abc", "1.5", "-7"],
    "float": ["abc", "nan", "inf", "-1"],
    "str": ["nosuch"],
    "tuple[str, ...]": ["nosuch"],
}
"""Bad values by the flag's declared type (the ``| None`` part dropped)."""

SKIPPED = {
    "--run-dir": "any path is a run folder; a file there is tested in test_cli.py",
    "--option": "its syntax has the hand-written cases below",
    "--data-dir": "a path: a missing folder is a hand-written case below",
    "--model": "a name, but the table chooses --model 2nn; a hand-written case below",
    "--clients": "the table's --clients 20; hand-written cases below",
    "--rounds": "the table's --rounds 1; hand-written cases below",
    "--clients-per-round": "hand-written cases below (a cohort of 0 or more than the clients)",
}


def _flags() -> dict[str, tuple[str, str, list[str]]]:
    """Every flag of ``privfl run``: its key, its type and the flags that choose its owner."""
    flags: dict[str, tuple[str, str, list[str]]] = {}
    for spec in config_fields():
        flag = spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")
        flags[flag] = (spec.name, str(spec.type), [])
    registry = get_plugin_manager().components
    for flag, owners in component_flags(registry).items():
        kind, name, spec = owners[0]
        owner = [CHOOSE[kind], name, *NEEDS.get(name, [])] if kind in CHOOSE else []
        flags[flag] = (spec.name, spec.type, owner)
    return flags


def cli_cases() -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(id, argv, words the error must name: the flag or its key) of every bad input."""
    cases: list[tuple[str, list[str], tuple[str, ...]]] = []
    for flag, (key, kind, owner) in sorted(_flags().items()):
        if flag in SKIPPED:
            continue
        for value in BAD_VALUES.get(kind.replace(" | None", ""), []):
            names = (flag, key, key.rstrip("s"))  # "evaluator = ..." for --eval's evaluators
            cases.append((f"{flag}={value}", ["run", *FAST, *owner, flag, value], names))
    hand = {
        "--model=nosuch": (["--model", "nosuch"], "model"),
        "--clients=0": (["--clients", "0"], "clients"),
        "--clients=abc": (["--clients", "abc"], "--clients"),
        "--rounds=-1": (["--rounds", "-1"], "rounds"),
        "--rounds=2.5": (["--rounds", "2.5"], "--rounds"),
        "--clients-per-round=0": (
            ["--sampler", "uniform", "--clients-per-round", "0"],
            "clients_per_round",
        ),
        "--clients-per-round=21": (
            ["--sampler", "uniform", "--clients-per-round", "21"],
            "clients_per_round",
        ),
        "--data-dir=missing": (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
        "--option=nodot": (["--option", "nodot"], "nodot"),
        "--option=no-value": (["--option", "plaintext.batch_size"], "plaintext.batch_size"),
        "--option=unknown-table": (["--option", "nosuch.key=1"], "nosuch"),
        "--option=unknown-key": (["--option", "all.nosuch=1"], "all.nosuch"),
        "--option=wrong-type": (["--option", "uniform.availability=high"], "availability"),
        "--option=not-chosen": (["--option", "poisson.sample_rate=0.5"], "poisson"),
    }
    for name, (flags, word) in hand.items():
        cases.append((name, ["run", *FAST, *flags], (word,)))
    return cases


def _config_cases() -> Iterator[tuple[str, str]]:
    """(id, TOML text) of bad config files."""
    yield "epochs-string", 'epochs = "3"\n'
    yield "lr-string", 'lr = "fast"\n'
    yield "seed-float", "seed = 1.5\n"
    yield "mechanisms-string", 'mechanisms = "dp"\n'
    yield "unknown-key", "roundz = 3\n"
    yield "table-not-table", 'uniform = "fast"\n'
    yield "options-not-table", 'options = "x"\n'
    yield "unknown-option", "[uniform]\nclients_per_rnd = 3\n"
    yield "option-wrong-type", '[uniform]\nclients_per_round = "five"\n'
    yield "not-toml", "rounds = = 3\n"


CASES = cli_cases()


def _exit_status(argv: list[str]) -> int | str | None:
    """``privfl``'s exit status: what main returns, or argparse's SystemExit code."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize(
    ("argv", "names"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_flag_exits_2_with_one_line_before_writing(
    tmp_path: Path, capsys, argv: list[str], names: tuple[str, ...]
) -> None:
    run_dir = tmp_path / "run"
    assert _exit_status([*argv, "--run-dir", str(run_dir)]) == 2
    captured = capsys.readouterr()
    output = (captured.out + captured.err).replace("\n", " ")
    assert "Traceback" not in output
    assert any(name in output for name in names), output  # names the flag or its key
    assert argv[-1] in output or argv[-1].split("=")[-1] in output, output  # and the value
    assert not run_dir.exists()


@pytest.mark.parametrize(("name", "text"), list(_config_cases()))
def test_bad_config_file_exits_2_with_one_line_before_writing(
    tmp_path: Path, capsys, name: str, text: str
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(text)
    run_dir = tmp_path / "run"
    assert _exit_status(["run", str(config), *FAST, "--run-dir", str(run_dir)]) == 2
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "error" in output
    assert "Traceback" not in output
    assert not run_dir.exists()


def test_the_table_covers_more_than_the_113_inputs_tried_by_hand() -> None:
    assert len(CASES) + len(list(_config_cases())) > 113
