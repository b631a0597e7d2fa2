"""``privfl run`` with client-level DP and secure aggregation, from the command line."""

from __future__ import annotations

import json

from privfl.cli.main import main

DP = [
    "--model", "2nn", "--clients", "500", "--sampler", "poisson", "--sample-rate", "0.2",
    "--dp", "--dp-clip", "1.0", "--dp-noise", "1.0", "--delta", "1e-5",
]  # fmt: skip


def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_dp_run_shows_epsilon_every_round_and_stops_at_the_target(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = [*DP, "--target-epsilon", "5", "--rounds", "100", "--secure-noise"]
    assert main(["run", *flags, "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    table = out[: out.index("privfl run")]
    assert any(line.split()[:1] == ["round"] and "ε" in line.split() for line in table.splitlines())
    records = history(run_dir)
    assert 1 < len(records) < 100
    epsilons = [r["epsilon"] for r in records]
    assert epsilons == sorted(epsilons)
    assert epsilons[-1] <= 5.0
    assert all(r["delta"] == 1e-5 for r in records)
    # The default accountant names the one it uses (PLD for Poisson sampling) and why,
    # in the first record, the table (once) and the summary.
    assert records[0]["accountant"].startswith("pld: Poisson sampling")
    assert not any("accountant" in r for r in records[1:])
    assert out.count("accountant: pld: Poisson sampling") == 1
    assert "accountant" in out[out.index("privfl run") :]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped"
    assert "privacy budget" in status["stop_reason"]
    assert "privacy budget" in out
    assert "warning" not in out


def test_dp_without_secure_noise_warns_loudly(tmp_path, capsys):
    assert main(["run", *DP, "--rounds", "1", "--run-dir", str(tmp_path / "run")]) == 0
    assert "warning: DP noise comes from torch's seeded generator" in capsys.readouterr().out


def test_resumed_dp_run_reports_the_same_epsilon(tmp_path, capsys):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["run", *DP, "--rounds", "4", "--run-dir", str(whole)]) == 0
    assert main(["run", *DP, "--rounds", "2", "--run-dir", str(split)]) == 0
    config = split / "config.toml"
    config.write_text(config.read_text().replace("rounds = 2", "rounds = 4"))
    assert main(["resume", str(split)]) == 0
    assert [r["epsilon"] for r in history(whole)] == [r["epsilon"] for r in history(split)]
    # Said again in the first round after the resume.
    methods = {
        r["round"]: r["accountant"].split(":")[0] for r in history(split) if "accountant" in r
    }
    assert methods == {1: "pld", 3: "pld"}


def test_dp_with_a_robust_aggregator_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", *DP, "--aggregator", "median", "--run-dir", str(run_dir)]) == 2
    assert "works on a sum" in capsys.readouterr().out
    assert not run_dir.exists()


def test_secagg_plus_with_dropouts_from_the_command_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--model", "2nn", "--clients", "20", "--clients-per-round", "10", "--rounds", "2"]
    flags += ["--secagg", "secagg+", "--dropout", "0.3"]
    assert main(["run", *flags, "--run-dir", str(run_dir)]) == 0
    records = history(run_dir)
    assert all(r["secagg_contributors"] <= 10 for r in records)
    assert all(sum(len(v) for v in r["secagg_dropped"].values()) == 3 for r in records)
    assert "final accuracy" in capsys.readouterr().out
