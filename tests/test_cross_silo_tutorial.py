"""The cross-silo tutorial runs and shows what its page says."""

from __future__ import annotations

import re


def test_cross_silo_tutorial_matches_central_training_and_its_smpc_evaluation(run_tutorial):
    stdout = run_tutorial("cross_silo")
    assert "alice.csv: 221 patients" in stdout
    assert "bob.csv: 221 patients" in stdout
    assert "task regression, metrics mse, mae, r2" in stdout
    rows = re.findall(r"round +(\d+)  mse (\S+)  mae (\S+)  r2 (\S+)", stdout)
    assert [int(r[0]) for r in rows] == [5, 10, 15, 20], stdout
    assert float(rows[-1][3]) > 0.4
    federated, central = (
        float(x) for x in re.search(r"federated (\S+), central (\S+)", stdout).groups()
    )
    assert federated <= 1.1 * central  # the bar; measured 1.003
    secure = float(re.search(r"secure MSE +(\S+)", stdout).group(1))
    plain = float(re.search(r"plaintext MSE +(\S+)", stdout).group(1))
    difference = float(re.search(r"largest prediction difference (\S+)", stdout).group(1))
    assert difference < 1e-3
    assert abs(secure - plain) <= 2 * difference + difference**2 + 1e-6  # MAE < 1, 6 digits
