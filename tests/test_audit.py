"""Privacy audits with canary clients: a DP claim without its noise is caught, an honest
one is not, canaries go through DP as clients do, and ``privfl audit`` writes its report."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from privfl.app.config import RunConfig
from privfl.audit import CanaryAudit, audit
from privfl.audit.canaries import Canaries, canary_directions
from privfl.builtin.dp_mechanism import DPFedAvg
from privfl.cli.main import main
from privfl.client import LocalTraining
from privfl.client_data import FolderData, client_data_source
from privfl.data.partition import iid
from privfl.errors import ConfigError, PrivacyWarning
from privfl.federation import Federation
from privfl.mechanisms import PrivacyMechanism
from privfl.testing import make_plugin_manager, tiny_dataset

FEATURES = 500
"""Inputs of the tiny model: 1,002 parameters, so 100 canary directions are nearly
orthogonal (cosines of order 1/sqrt(1002))."""


class LeakyDP(DPFedAvg):
    """Test only: claims DP-FedAvg's epsilon but adds ``scale`` times its noise."""

    name = "leaky-dp"

    def __init__(self, scale: float = 0.1, **options) -> None:
        super().__init__(**options)
        self.scale = scale

    def _noise(self, numel: int, std: float, generator: torch.Generator) -> torch.Tensor:
        return super()._noise(numel, std * self.scale, generator)


def audited(mechanism: PrivacyMechanism, *, canaries: int = 200, rounds: int = 2):
    """Audit a federation of 20 clients (all in every round) on a 1,002-parameter model."""
    train, test = tiny_dataset(400, FEATURES)
    torch.manual_seed(0)
    return audit(
        rounds=rounds,
        canaries=canaries,
        canary_seed=1,
        resamples=50,
        model=torch.nn.Linear(FEATURES, 2),
        train=train,
        test=test,
        partition=iid(len(train), 20, seed=0),
        training=LocalTraining(lr=0.1),
        sampler="all",
        mechanisms=[mechanism],
        plugins=make_plugin_manager(),
    )


def dp(cls: type = DPFedAvg, **options) -> DPFedAvg:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        return cls(clip=1.0, noise_multiplier=3.0, delta=1e-5, **options)


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_a_mechanism_that_claims_dp_without_its_noise_is_caught(scale):
    report = audited(dp(LeakyDP, scale=scale))
    # Two rounds at z = 3 claim epsilon 1.87 (the default accountant, auto, uses PLD for
    # everyone; RDP claims 2.03); measured bounds: 2.87 (no noise), 2.53 (a tenth).
    assert report.claimed_epsilon == pytest.approx(1.87, abs=0.01)
    assert report.lower_bound.epsilon > report.claimed_epsilon
    assert report.refuted
    assert report.lower_bound.beta == pytest.approx(0.05)
    assert any("EXCEEDS the claim" in line for line in report.summary())


def test_the_bound_on_honest_dp_stays_under_its_claim():
    report = audited(dp())
    assert report.lower_bound.epsilon <= report.claimed_epsilon  # measured 0.06 of 2.03
    assert not report.refuted
    assert report.included == int(CanaryAudit(200, seed=1).included.sum())
    assert report.rounds == 2
    assert report.all_iterates.low <= report.all_iterates.epsilon <= report.all_iterates.high


class Recorder(PrivacyMechanism):
    """Test only: keeps the updates its client half receives (in-process executor)."""

    name = "recorder"
    clip = 0.5

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def client_step(self, update, *, config, generator, statistics):
        self.seen.append(update.clone())
        return update


def simulated(train):
    """Four simulated clients of ``train``."""
    return client_data_source(train, iid(len(train), 4, seed=0), None)


def test_canary_clients_hand_their_direction_at_the_clip_norm_to_the_client_steps():
    train, test = tiny_dataset(40, 6)
    canaries = CanaryAudit(8, seed=3)
    recorder = Recorder()
    federation = Federation(
        model=torch.nn.Linear(6, 2),
        client_data=canaries.population(simulated(train)),
        test=test,
        sampler="all",
        executor="serial",
        mechanisms=[recorder],
        plugins=make_plugin_manager(),
    )
    canaries.attach(federation)
    federation.run(1)
    # Every canary is a client (ids 4 to 11, after the 4 real ones), so the population
    # does not depend on which were included; excluded canaries send zeros.
    assert federation.num_clients == 4 + 8
    assert federation.history[0].values["malicious"] == list(range(4, 12))
    sent = torch.stack(recorder.seen[-8:])  # canary clients have the last ids
    included = torch.from_numpy(canaries.included)
    assert 0 < int(included.sum()) < 8
    expected = canary_directions(3, range(8), 14) * 0.5
    assert torch.allclose(sent[included], expected[included])
    assert torch.allclose(sent[included].norm(dim=1), torch.full((int(included.sum()),), 0.5))
    assert not sent[~included].any()
    scores = canaries.scores()
    assert scores.final.shape == scores.iterates.shape == (8,)
    assert scores.rounds == 1


def test_canaries_send_the_same_bytes_wherever_they_run():
    attack = Canaries({7: 2, 8: 3}, frozenset({2}), norm=1.5, seed=9)
    first = attack.craft_update(torch.zeros(30), client_id=7)
    assert torch.equal(first, attack.craft_update(torch.ones(30), client_id=7))
    assert first.norm().item() == pytest.approx(1.5)
    assert not attack.craft_update(torch.ones(30), client_id=8).any()  # excluded: zeros


def test_an_audit_needs_simulated_clients_and_a_dp_mechanism(tmp_path):
    with pytest.raises(ConfigError, match="simulated clients"):
        CanaryAudit(10).population(FolderData(tmp_path, 3))
    train, test = tiny_dataset(40, 6)
    canaries = CanaryAudit(10)
    federation = Federation(
        model=torch.nn.Linear(6, 2),
        client_data=canaries.population(simulated(train)),
        test=test,
        sampler="all",
        plugins=make_plugin_manager(),
    )
    with pytest.raises(ConfigError, match="client-level DP mechanism"):
        canaries.attach(federation)
    with pytest.raises(ConfigError, match="canaries"):
        CanaryAudit(1)


def test_privfl_audit_writes_its_report_and_leaves_the_run_alone(tmp_path, capsys):
    config = RunConfig(
        model="2nn",
        clients=20,
        sampler="all",
        rounds=1,
        mechanisms=("dp",),
        eval_every=1,
        tables={"dp": {"clip": 1.0, "noise_multiplier": 2.0, "delta": 1e-5}},
    )
    (tmp_path / "config.toml").write_text(config.to_toml())
    assert main(["audit", str(tmp_path), "--canaries", "40", "--canary-seed", "2", "-q"]) == 0
    written = json.loads((tmp_path / "audit.json").read_text())
    assert written["claimed_epsilon"] > 0
    assert written["lower_bound"]["epsilon"] <= written["claimed_epsilon"]
    assert written["canaries"] == 40
    assert written["canary_seed"] == 2
    assert any("Final-model estimate" in line for line in written["summary"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json", "config.toml"]
    out = capsys.readouterr().out
    assert "provable lower bound" in out
    assert "train loss" not in out  # --quiet: no per-round table
    assert main(["audit", str(tmp_path / "nothing-here")]) == 2
    plain = tmp_path / "no-dp"
    plain.mkdir()
    (plain / "config.toml").write_text(RunConfig(model="2nn", clients=20, rounds=1).to_toml())
    assert main(["audit", str(plain)]) == 2
    assert "client-level DP mechanism" in capsys.readouterr().out
