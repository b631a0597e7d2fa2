"""Client-level DP-FedAvg as a mechanism: clipping, noise, fixed denominator, accounting."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch

import privfl
from privfl.algorithms.dp import noise_to_signal
from privfl.app.checkpoint import load_checkpoint, save_checkpoint
from privfl.builtin.accountants import RdpPrivacyAccountant
from privfl.builtin.dp_mechanism import DPFedAvg
from privfl.builtin.pld_accountant import PldPrivacyAccountant
from privfl.testing import tiny_federation

SECURE = {"secure_noise": True}

# Tiny federations have a few clients and many parameters per client: both warnings
# are right about them, and are tested on their own below.
pytestmark = [
    pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning"),
    pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning"),
]


def bound(mechanism: DPFedAvg, *, expected: float = 10.0, kind: str = "poisson") -> DPFedAvg:
    sampling = privfl.Sampling(kind, 100, rate=expected / 100 if kind == "poisson" else None)
    mechanism.setup(
        privfl.MechanismSetup(
            sampling=sampling,
            expected_clients=expected,
            num_clients=100,
            dimension=10,
            seed=0,
            position=0,
            create=lambda kind, name: RdpPrivacyAccountant(),
            secure_aggregation=True,
        )
    )
    return mechanism


def client_step(mechanism: DPFedAvg, update: torch.Tensor, generator: torch.Generator):
    """The client half, with the config its server half sends for a round."""
    config = mechanism.client_config(round=1, client_ids=[0])
    return mechanism.client_step(update, config=config, generator=generator, statistics={})


def server_noise(mechanism: DPFedAvg, *, dim: int, expected: float) -> torch.Tensor:
    aggregate, _ = mechanism.server_step(
        torch.zeros(dim),
        expected_clients=expected,
        contributors=int(expected),
        statistics={},
        generator=torch.Generator().manual_seed(1),
    )
    return aggregate


@pytest.mark.parametrize("secure", [True, False])
def test_central_noise_std_is_z_c_over_expected_clients(secure):
    z, clip, expected = 1.3, 0.7, 10.0
    with pytest.warns(privfl.PrivacyWarning) if not secure else nullcontext():
        mechanism = bound(DPFedAvg(clip=clip, noise_multiplier=z, secure_noise=secure))
    noise = server_noise(mechanism, dim=200_000, expected=expected)
    measured = float(noise.std())
    assert measured == pytest.approx(z * clip / expected, rel=0.03)
    assert abs(float(noise.mean())) < 0.01 * z * clip / expected


def test_seeded_noise_warns_and_repeats():
    with pytest.warns(privfl.PrivacyWarning, match="not cryptographically secure"):
        first = bound(DPFedAvg())
    with pytest.warns(privfl.PrivacyWarning):
        second = bound(DPFedAvg())
    assert torch.equal(
        server_noise(first, dim=100, expected=10.0), server_noise(second, dim=100, expected=10.0)
    )


def test_secure_noise_differs_between_runs():
    one = bound(DPFedAvg(**SECURE))
    two = bound(DPFedAvg(**SECURE))
    assert not torch.equal(
        server_noise(one, dim=100, expected=10.0), server_noise(two, dim=100, expected=10.0)
    )


def test_client_step_clips_to_c_and_leaves_small_updates_alone():
    mechanism = bound(DPFedAvg(clip=1.0, **SECURE))
    generator = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.5, 3.0, 100.0):
        update = torch.randn(1000, generator=generator)
        update = update / update.norm() * scale
        clipped = client_step(mechanism, update, generator)
        assert float(clipped.norm()) <= 1.0 + 1e-5
        if scale <= 1.0:
            assert torch.equal(clipped, update)


def test_local_mode_noises_each_client_with_z_c():
    mechanism = bound(DPFedAvg(clip=0.5, noise_multiplier=2.0, mode="local", **SECURE))
    noised = client_step(mechanism, torch.zeros(200_000), torch.Generator())
    assert float(noised.std()) == pytest.approx(2.0 * 0.5, rel=0.03)


def test_distributed_mode_shares_sum_to_z_c():
    expected = 25.0
    mechanism = bound(
        DPFedAvg(clip=0.5, noise_multiplier=2.0, mode="distributed", **SECURE), expected=expected
    )
    shares = [
        client_step(mechanism, torch.zeros(40_000), torch.Generator()) for _ in range(int(expected))
    ]
    assert float(torch.stack(shares).sum(0).std()) == pytest.approx(2.0 * 0.5, rel=0.03)
    # Fewer contributors than planned: the round is accounted with less noise.
    server_noise(mechanism, dim=10, expected=expected)  # all 25 contributed
    full = mechanism.accountant.epsilon(1e-5)
    mechanism.server_step(
        torch.zeros(10),
        expected_clients=expected,
        contributors=5,
        statistics={},
        generator=torch.Generator(),
    )
    reference = RdpPrivacyAccountant()
    sampling = mechanism.sampling
    reference.compose(sampling=sampling, noise_multiplier=2.0)
    reference.compose(sampling=sampling, noise_multiplier=2.0 * math.sqrt(5 / 25))
    assert reference.epsilon(1e-5) == pytest.approx(mechanism.accountant.epsilon(1e-5))
    assert mechanism.accountant.epsilon(1e-5) > 2 * full


def test_fixed_denominator_bounds_the_step_by_c():
    """The sum of clipped updates over the expected clients moves the model by <= C."""
    clip = 0.05
    fed = tiny_federation(
        mechanisms=["dp"],
        options={"dp": {"clip": clip, "noise_multiplier": 1e-9, **SECURE}},
    )
    before = fed.params.clone()
    fed.run(1)
    step = float((fed.params - before).norm())
    assert step <= clip * (1 + 1e-4)
    assert step > 0.5 * clip  # four similar clipped updates, not one fourth of one


def test_every_record_holds_epsilon_from_the_accountant():
    fed = tiny_federation(
        mechanisms=["dp"], options={"dp": {"noise_multiplier": 1.5, "delta": 1e-6, **SECURE}}
    )
    records = fed.run(4)
    # The default accountant, auto, uses PLD for everyone at z = 1.5, and says so in the
    # first record (and in any where its choice changes).
    reference = PldPrivacyAccountant()
    for record in records:
        reference.compose(sampling=privfl.Sampling("all", 4), noise_multiplier=1.5)
        assert record.values["epsilon"] == reference.epsilon(1e-6)
        assert record.values["delta"] == 1e-6
    assert records[0].values["accountant"].startswith("pld: Poisson sampling or everyone")
    assert not any("accountant" in record.values for record in records[1:])
    epsilons = [r.values["epsilon"] for r in records]
    assert epsilons == sorted(epsilons)
    assert epsilons[0] > 0


def test_target_epsilon_stops_before_the_round_that_would_exceed_it():
    fed = tiny_federation(
        num_clients=20,
        sampler="poisson",
        mechanisms=["dp"],
        options={"poisson": {"sample_rate": 0.2}, "dp": {"target_epsilon": 4.0, **SECURE}},
    )
    records = fed.run(200)
    assert len(records) < 200
    assert records[-1].values["epsilon"] <= 4.0
    assert fed.mechanisms[0].epsilon_after(1) > 4.0
    assert "privacy budget" in fed.stop_reason
    assert "4" in fed.stop_reason


def test_target_below_one_round_is_a_config_error():
    with pytest.raises(privfl.ConfigError, match="target_epsilon"):
        tiny_federation(mechanisms=["dp"], options={"dp": {"target_epsilon": 0.01, **SECURE}})


def test_checkpoint_restores_epsilon_and_clip(tmp_path):
    options = {"dp": {"adaptive_quantile": 0.5, "count_stddev": 2.0, **SECURE}}
    fed = tiny_federation(mechanisms=["dp"], options=options)
    fed.run(3)
    save_checkpoint(tmp_path / "c.safetensors", fed.state_dict())
    resumed = tiny_federation(mechanisms=["dp"], options=options)
    resumed.load_state_dict(load_checkpoint(tmp_path / "c.safetensors"))
    original, restored = fed.mechanisms[0], resumed.mechanisms[0]
    assert restored.accountant.epsilon(1e-5) == original.accountant.epsilon(1e-5)
    assert restored.clip == original.clip != 1.0


def test_adaptive_clip_moves_towards_the_quantile():
    """Tiny updates sit far below C = 10: the clip norm must shrink round after round."""
    fed = tiny_federation(
        num_clients=40,
        mechanisms=["dp"],
        options={
            "dp": {
                "clip": 10.0,
                "adaptive_quantile": 0.5,
                "noise_multiplier": 5.0,
                "count_stddev": 4.0,
                **SECURE,
            }
        },
    )
    clips = [r.values["clip"] for r in fed.run(8)]
    assert clips[0] == 10.0
    assert clips[-1] < 10.0 * math.exp(-0.2 * 0.3 * 7)  # most rounds pushed it down


@pytest.mark.parametrize("aggregator", ["trimmed-mean", "median", "krum"])
def test_dp_refuses_aggregators_that_need_every_update(aggregator):
    with pytest.raises(privfl.ConfigError, match="works on a sum"):
        tiny_federation(mechanisms=["dp"], aggregator=aggregator, options={"dp": SECURE})


def test_dp_refuses_a_sampler_that_does_not_state_its_scheme():
    class Opaque(privfl.ClientSampler):
        name = "opaque"

        def sample(self, *, num_clients, generator):
            return torch.arange(num_clients)

        def expected_clients(self, num_clients):
            return float(num_clients)

    with pytest.raises(privfl.ConfigError, match="states how it samples"):
        tiny_federation(sampler=Opaque(), mechanisms=["dp"], options={"dp": SECURE})


def test_pld_refuses_a_fixed_cohort_with_a_way_out():
    with pytest.raises(privfl.ConfigError, match="--sampler poisson"):
        tiny_federation(
            sampler="uniform",
            mechanisms=["dp"],
            options={"uniform": {"clients_per_round": 2}, "dp": {"accountant": "pld", **SECURE}},
        )


@pytest.mark.parametrize(
    ("option", "value"),
    [("clip", 0.0), ("noise_multiplier", -1.0), ("mode", "global"), ("delta", 1.0)],
)
def test_bad_options_name_the_key(option, value):
    with pytest.raises(privfl.ConfigError) as info:
        DPFedAvg(**{option: value}, **SECURE)
    assert repr(value) in str(info.value)


def test_huge_finite_updates_are_clipped_and_nan_ones_left_to_screening():
    mechanism = bound(DPFedAvg(clip=1.0, **SECURE))
    huge = client_step(mechanism, torch.full((1000,), 3e38), torch.Generator())
    assert float(huge.double().norm()) == pytest.approx(1.0, rel=1e-5)
    nan = torch.full((10,), float("nan"))
    assert client_step(mechanism, nan, torch.Generator()) is nan


def _setup(mechanism: DPFedAvg, *, num_clients: int, expected: float, dimension: int, secure: bool):
    mechanism.setup(
        privfl.MechanismSetup(
            sampling=privfl.Sampling("poisson", num_clients, rate=expected / num_clients),
            expected_clients=expected,
            num_clients=num_clients,
            dimension=dimension,
            seed=0,
            position=0,
            create=lambda kind, name: RdpPrivacyAccountant(),
            secure_aggregation=secure,
        )
    )


@pytest.mark.filterwarnings("error")
def test_distributed_noise_without_secure_aggregation_is_refused():
    with pytest.raises(privfl.ConfigError, match=r"mode = 'distributed'.*add secure aggregation"):
        _setup(
            DPFedAvg(mode="distributed", **SECURE),
            num_clients=1000,
            expected=100,
            dimension=10_000,
            secure=False,
        )


@pytest.mark.filterwarnings("error")
def test_noise_that_drowns_the_update_is_warned_about_with_numbers_and_a_fix():
    # The README's old example: 2NN, 100 clients, Poisson rate 0.1.
    with pytest.warns(privfl.UtilityWarning, match=r"about 44\.6x the clip norm") as caught:
        _setup(DPFedAvg(**SECURE), num_clients=100, expected=10, dimension=199_210, secure=False)
    assert "about 45 clients per round" in str(caught[0].message)
    # 100 expected clients keep it at 4.5: no warning.
    _setup(DPFedAvg(**SECURE), num_clients=1000, expected=100, dimension=199_210, secure=False)


def test_noise_to_signal_follows_where_the_noise_is_added():
    assert noise_to_signal(1.0, 10_000, 100) == pytest.approx(1.0)
    assert noise_to_signal(2.0, 10_000, 100, local=True) == pytest.approx(20.0)


def test_client_level_dp_over_a_few_owners_points_to_record_level_dp():
    with pytest.warns(privfl.PrivacyWarning, match="over 2 clients.*record-level DP"):
        _setup(DPFedAvg(**SECURE), num_clients=2, expected=2, dimension=10, secure=False)


def test_central_dp_server_refuses_updates_above_the_clip_norm_and_names_them():
    fed = tiny_federation(
        num_clients=8,
        mechanisms=["dp"],
        attack="gaussian",
        malicious_fraction=0.25,
        options={"dp": {"secure_noise": True, "clip": 0.5}},
    )
    record = fed.run(1)[-1]
    assert set(record.rejected) == set(fed.malicious)
    for reason in record.rejected.values():
        assert "exceeds the clip norm 0.5" in reason
    assert record.num_examples > 0  # the honest clients' clipped updates went through


def test_local_dp_updates_are_not_held_to_the_clip_norm():
    fed = tiny_federation(
        num_clients=8,
        mechanisms=["dp"],
        options={"dp": {"secure_noise": True, "mode": "local", "noise_multiplier": 0.5}},
    )
    assert fed.run(1)[-1].rejected == {}
