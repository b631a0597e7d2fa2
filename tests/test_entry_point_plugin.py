"""A plugin package outside privfl's source, installed with pip, found through the entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "plugins" / "privfl-example"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> dict[str, str]:
    """Copy the example plugin out of the tree, pip-install it into a folder, return the env."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "privfl-example"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    target = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    env.pop("PRIVFL_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


def _privfl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "privfl.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_installed_plugin_is_listed(installed_plugin, tmp_path):
    result = _privfl("plugins", env=installed_plugin, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "example (privfl-example 0.1.0)" in result.stdout
    assert "aggregator unweighted-mean" in result.stdout
    assert "mechanism update-norm-bound: max_norm=10.0 (--max-update-norm)" in result.stdout


def test_installed_plugin_aggregator_is_used_by_run(installed_plugin, tmp_path):
    result = _privfl(
        "run",
        "--model",
        "2nn",
        "--clients",
        "10",
        "--clients-per-round",
        "5",
        "--rounds",
        "2",
        "--aggregator",
        "unweighted-mean",
        "--run-dir",
        "run",
        env=installed_plugin,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2
    assert json.loads(history[-1])["accuracy"] > 0.5
    assert 'aggregator = "unweighted-mean"' in (tmp_path / "run" / "config.toml").read_text()


def test_blocking_the_installed_plugin_makes_its_name_unknown(installed_plugin, tmp_path):
    env = dict(installed_plugin, PRIVFL_BLOCK_PLUGINS="example")
    result = _privfl("run", "--aggregator", "unweighted-mean", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "aggregator = 'unweighted-mean' is not allowed" in result.stdout


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


FAST = ["--model", "2nn", "--clients", "10", "--clients-per-round", "5", "--rounds", "2"]


def test_plugin_mechanism_is_chosen_and_configured_from_toml(installed_plugin, tmp_path):
    config = tmp_path / "job.toml"
    config.write_text('mechanisms = ["update-norm-bound"]\n[update-norm-bound]\nmax_norm = 0.5\n')
    result = _privfl(
        "run", str(config), *FAST, "--run-dir", "run", env=installed_plugin, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = (tmp_path / "run" / "config.toml").read_text()
    assert "[update-norm-bound]\nmax_norm = 0.5" in written
    assert len(_history(tmp_path / "run")) == 2


def test_plugin_mechanism_is_chosen_and_configured_from_flags(installed_plugin, tmp_path):
    flags = ["--mechanism", "update-norm-bound", "--max-update-norm", "0.25"]
    result = _privfl("run", *FAST, *flags, "--run-dir", "run", env=installed_plugin, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max_norm = 0.25" in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[update-norm-bound]\nmax_nrom = 0.5\n",
            "update-norm-bound.max_nrom = 0.5 is not allowed: did you mean 'max_norm'?",
        ),
        ("[update-norm-bond]\nmax_norm = 0.5\n", "did you mean [update-norm-bound]?"),
        ("[update-norm-bound]\nmax_norm = -1.0\n", "update-norm-bound.max_norm = -1.0"),
    ],
)
def test_misspelt_plugin_options_exit_2_naming_them(installed_plugin, tmp_path, toml, message):
    config = tmp_path / "job.toml"
    config.write_text('mechanisms = ["update-norm-bound"]\n' + toml)
    result = _privfl(
        "run", str(config), *FAST, "--run-dir", "run", env=installed_plugin, cwd=tmp_path
    )
    assert result.returncode == 2
    assert message in result.stdout.replace("\n", " ")
    assert not (tmp_path / "run").exists()
