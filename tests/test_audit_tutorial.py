"""The privacy-audit tutorial runs and shows what its page says."""

from __future__ import annotations

import re


def test_privacy_audit_tutorial_passes_dp_and_catches_the_bug(run_tutorial):
    stdout = run_tutorial("privacy_audit")
    claims = [float(c) for c in re.findall(r"claimed epsilon +(\S+)", stdout)]
    bounds = [float(b) for b in re.findall(r"provable lower bound +(\S+)", stdout)]
    refuted = re.findall(r"claim refuted: (\w+)", stdout)
    assert len(claims) == len(bounds) == len(refuted) == 2, stdout
    assert claims[0] == claims[1]  # the bug claims the same epsilon
    assert bounds[0] <= claims[0]  # measured 0.00 of 1.84
    assert bounds[1] > claims[1]  # measured 2.62 of 1.84
    assert refuted == ["False", "True"]
    assert len(re.findall(r"all-iterates estimate +\S+ +\(interval", stdout)) == 2
