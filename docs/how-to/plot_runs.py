"""Two runs under attack, FedAvg and the median, and `privfl report` of both.

The docs build runs this script from the docs folder (docs/how-to/plot-runs.md shows
its output); it writes the report, whose accuracy plot the page shows, to
_build/plot-runs. It runs the ``privfl`` command's entry point in this process (one
import of torch instead of three), with the commands' own output left out.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from privfl.cli.main import main

REPORT = Path("_build/plot-runs").resolve()
RUN = ["--model", "2nn", "--clients", "20", "--clients-per-round", "10", "--rounds", "6"]
RUN += ["--attack", "gaussian"]  # 4 of the 20 clients send noise instead of an update


def privfl(*args: str) -> None:
    print("$ privfl " + " ".join(args))
    with contextlib.redirect_stdout(io.StringIO()) as output:
        status = main(list(args))
    assert status == 0, output.getvalue()


docs = Path.cwd()
with tempfile.TemporaryDirectory() as folder:
    os.chdir(folder)  # the run folders' names are what the report's summary shows
    for aggregator in ("fedavg", "median"):
        privfl("run", *RUN, "--aggregator", aggregator, "--run-dir", aggregator)
    privfl("report", "fedavg", "median", "--out", "report")
    shutil.rmtree(REPORT, ignore_errors=True)
    shutil.copytree("report", REPORT)
    os.chdir(docs)

print("$ cat report/summary.md")
print((REPORT / "summary.md").read_text(), end="")
