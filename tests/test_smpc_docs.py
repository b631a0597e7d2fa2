"""The encrypted-evaluation tutorial: its script runs, and its output shows what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCRIPT = DOCS / "tutorials" / "encrypted_evaluation.py"
PAGE = DOCS / "tutorials" / "encrypted_evaluation.md"

MIN_PLAINTEXT_ACCURACY = 0.85
"""The script's 2NN reaches 0.8880 after 20 seeded rounds; 0.85 leaves room for
floating-point differences between machines and torch versions."""

MAX_GAP = 0.005
"""Encrypted accuracy may differ from plaintext accuracy by at most 0.5 percentage points
(fixed-point rounding can flip near-ties; on this script none flips)."""

ALLOWED_KINDS = {"beaver-masked", "and-masked", "bit-masked", "output"}


@pytest.fixture(scope="module")
def output(run_tutorial) -> str:
    return run_tutorial(SCRIPT.stem)


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matches {pattern!r} in:\n{text}"
    return float(match.group(1))


def test_shares_give_the_secret_back_and_one_share_is_uniform(output):
    assert "on a clock: 9 + 5 = 2" in output
    assert "(share 0 + share 1) mod 2^64 = 42" in output
    rows = re.findall(
        r"^secret\s+\d+: share 1 falls in each eighth ((?:[\d.]+ ?){8})$", output, re.M
    )
    assert len(rows) == 3, output
    for row in rows:
        assert all(abs(float(f) - 0.125) < 0.01 for f in row.split()), row
    assert "decode(encode(1.5) * encode(-0.25) >> 16) = -0.375" in output


def test_encrypted_accuracy_matches_plaintext(output):
    plaintext = _number(r"^plaintext accuracy (\d\.\d+)$", output)
    encrypted = _number(r"^encrypted accuracy (\d\.\d+) on 2000 test images$", output)
    assert plaintext > MIN_PLAINTEXT_ACCURACY, output
    assert abs(encrypted - plaintext) <= MAX_GAP, output
    correct = _number(r"^accuracy only: (\d+) of 500 correct", output)
    plain_correct = _number(r"^accuracy only: .*\(plaintext: (\d+)\)$", output)
    assert abs(correct - plain_correct) <= MAX_GAP * 500, output


def test_costs_are_reported(output):
    assert _number(r"^offline ([\d.]+) ms/image", output) > 0
    assert _number(r"online ([\d.]+) ms/image", output) > 0
    assert _number(r"^online ([\d.]+) kB/image in 52 rounds", output) > 0
    assert _number(r"^offline ([\d.]+) kB/image from the dealer", output) > 0
    assert _number(r"^input ([\d.]+) kB/image", output) == 12.5  # 784 pixels x 2 x 8 bytes


def test_only_masked_values_and_the_output_are_opened(output):
    kinds = set(re.search(r"^opened kinds: (.*)$", output, re.M).group(1).split(", "))
    assert kinds <= ALLOWED_KINDS, output
    assert "output" in kinds
    rows = dict(
        re.findall(r"^(output|beaver-masked|and-masked|bit-masked)\s+(\d+)\s", output, re.M)
    )
    assert rows["output"] == "1", "the predictions are opened once, all together"
    for kind in ("beaver-masked", "and-masked"):
        fraction = _number(rf"^{kind}\s.*uniform words: ([\d.e+-]+) below 2\^40", output)
        assert fraction < 1e-5, f"{kind} openings look like small encoded values: {output}"
    assert "outputs opened: 1, of shape (): a single number" in output


def test_page_includes_existing_pieces_and_runs_the_script():
    page, script = PAGE.read_text(), SCRIPT.read_text()
    markers = re.findall(r':(start-after|end-before): "(# \[[\w-]+\])"', page)
    assert len(markers) >= 2 * 8, "the page shows the script in pieces"
    for _, marker in markers:
        assert script.count(marker) == 1, f"{marker} is not in {SCRIPT.name} exactly once"
    assert "```{example-output} tutorials/encrypted_evaluation.py" in page
