"""The robust-aggregation tutorial runs and shows what its page says it shows."""

from __future__ import annotations


def test_robust_aggregation_tutorial_survives_the_gaussian_attack(run_tutorial):
    stdout = run_tutorial("robust_aggregation")
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in {"fedavg", "trimmed-mean", "median", "krum"}:
            rows[parts[0]] = (float(parts[1]), float(parts[2]))
    assert set(rows) == {"fedavg", "trimmed-mean", "median", "krum"}, stdout
    clean_fedavg, attacked_fedavg = rows["fedavg"]
    assert clean_fedavg > 0.85
    assert attacked_fedavg < 0.6  # measured 0.42: the noise dominates the mean
    for rule in ("trimmed-mean", "median", "krum"):
        clean, attacked = rows[rule]
        assert clean > 0.75, rule
        assert attacked > clean - 0.02, rule  # measured: within 0.005 of the clean run
