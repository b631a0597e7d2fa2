"""nox sessions: tests on every supported Python, plugin packages, lint, docs, and a wheel check.

The supported Pythons are read from the trove classifiers in pyproject.toml (as nox's
own noxfile does); interpreters missing on the machine are skipped, not errors.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
CONSTRAINTS = ("-c", str(ROOT / ".ci" / "constraints.txt"))

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.error_on_missing_interpreters = False
nox.options.reuse_existing_virtualenvs = True


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (arguments after -- go to pytest)."""
    session.install(*CONSTRAINTS, "-e", ".[test,docs]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def plugins(session: nox.Session) -> None:
    """Install each plugin package under plugins/ beside privfl and run its own tests."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    for package in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        folder = package.parent
        session.install(*CONSTRAINTS, "-e", f"{folder}[test]")
        session.run("python", "-m", "pytest", str(folder / "tests"), *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy on the package (settings in pyproject.toml)."""
    session.install(*CONSTRAINTS, "-e", ".[lint]")
    session.run("mypy")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the docs; warnings and broken references are errors."""
    session.install(*CONSTRAINTS, "-e", ".[docs]")
    shutil.rmtree(ROOT / "docs" / "_build", ignore_errors=True)
    session.run(
        "sphinx-build", "-n", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """Build the sdist and wheel, install the wheel in a fresh venv, and run privfl from it.

    The fresh venv sees this session's third-party packages (torch and the rest)
    through a .pth file, so the check takes seconds instead of a second torch install;
    privfl itself comes only from the wheel.
    """
    shutil.rmtree(ROOT / "dist", ignore_errors=True)
    session.install("build>=1.2")
    session.run("python", "-m", "build", "--outdir", "dist")
    session.install(*CONSTRAINTS, *PYPROJECT["project"]["dependencies"])
    tmp = Path(session.create_tmp()).resolve()
    fresh = tmp / "fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    session.run(sys.executable, "-m", "venv", "--without-pip", str(fresh), external=True)
    site = session.run(
        "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", silent=True
    ).strip()
    fresh_site = next((fresh / "lib").glob("python3*/site-packages"))
    (fresh_site / "session-deps.pth").write_text(site + "\n")
    wheel = next((ROOT / "dist").glob("privfl-*.whl"))
    fresh_python = str(fresh / "bin" / "python")
    session.run(
        "python", "-m", "pip", "--python", fresh_python, "install", "--no-index", str(wheel)
    )
    session.chdir(tmp)
    session.run(
        str(fresh / "bin" / "privfl"),
        "run",
        "--model",
        "2nn",
        "--rounds",
        "2",
        "--run-dir",
        str(tmp / "wheel-run"),
        external=True,
    )
    session.run(
        str(fresh / "bin" / "python"),
        "-c",
        "import json, pathlib; h = pathlib.Path('wheel-run/history.jsonl').read_text();"
        " assert len(h.splitlines()) == 2, h; print('wheel run ok')",
        external=True,
    )
