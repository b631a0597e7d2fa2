"""The DP and secure-aggregation tutorials run and show what their pages say."""

from __future__ import annotations

import re


def test_differential_privacy_tutorial_reports_epsilon_and_stops_at_the_budget(run_tutorial):
    stdout = run_tutorial("differential_privacy")
    rows = re.findall(r"round +(\d+) .*accuracy (\S+)  epsilon (\S+)", stdout)
    assert [int(r[0]) for r in rows] == [5, 10, 15, 20], stdout
    accuracies = [float(r[1]) for r in rows]
    epsilons = [float(r[2]) for r in rows]
    assert epsilons == sorted(epsilons)
    assert epsilons[0] > 0
    assert accuracies[-1] > 0.6  # measured 0.72: noisy but learning
    ran, epsilon = re.search(r"ran (\d+) of 100 rounds; epsilon (\S+)", stdout).groups()
    assert 1 <= int(ran) < 100
    assert float(epsilon) <= 3.0
    assert "privacy budget" in stdout


def test_secure_aggregation_tutorial_finishes_rounds_despite_dropouts(run_tutorial):
    stdout = run_tutorial("secure_aggregation")
    rows = re.findall(r"round +(\d+): +(\d+) of 20 clients in the sum, (\d+) dropped", stdout)
    assert len(rows) == 10, stdout
    for _, in_sum, dropped in rows:
        assert int(dropped) == 6  # 30% of 20
        assert 14 <= int(in_sum) < 20  # those dropping after their masked input still count
    secure = float(re.search(r"with secure aggregation: +(\S+)", stdout).group(1))
    plain = float(re.search(r"without \(nobody drops out\): +(\S+)", stdout).group(1))
    assert abs(secure - plain) < 0.02  # measured 0.8675 and 0.8645
