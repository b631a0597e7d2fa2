"""Shared test helpers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="session")
def run_tutorial() -> Callable[[str], str]:
    """Run ``docs/tutorials/NAME.py`` as the docs build does; return its standard output."""

    def run(name: str) -> str:
        done = subprocess.run(
            [sys.executable, str(DOCS / "tutorials" / f"{name}.py")],
            cwd=DOCS,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run
