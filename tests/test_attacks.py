"""Simulated attacks and FedProx: the math, the seeded malicious clients, their effect."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import norm

import privfl
from privfl.algorithms import attacks
from privfl.builtin.attacks import GaussianAttack, LittleIsEnough, SignFlip
from privfl.testing import make_plugin_manager, tiny_federation


def test_flip_labels():
    assert attacks.flip_labels(torch.tensor([0, 3, 9]), 10).tolist() == [9, 6, 0]


def test_sign_flip_scales_and_negates():
    updates = torch.tensor([[1.0, -2.0]])
    assert SignFlip(scale=3.0).poison_updates(updates, updates[:0], generator=None).tolist() == [
        [-3.0, 6.0]
    ]


def test_gaussian_updates_have_the_requested_spread():
    poisoned = GaussianAttack(sigma=2.0).poison_updates(
        torch.zeros(4, 50_000), torch.zeros(0, 50_000), generator=torch.Generator().manual_seed(0)
    )
    assert poisoned.shape == (4, 50_000)
    assert float(poisoned.std()) == pytest.approx(2.0, rel=0.01)
    assert abs(float(poisoned.mean())) < 0.01


@pytest.mark.parametrize(("n", "f"), [(50, 10), (100, 20), (10, 2)])
def test_alie_z_matches_the_normal_quantile(n, f):
    supporters = (n // 2 + 1) - f
    assert attacks.alie_z(n, f) == pytest.approx(norm.ppf((n - supporters) / n), rel=1e-9)


def test_alie_sends_mean_minus_z_std_of_the_honest_updates():
    benign = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    malicious = torch.tensor([[6.0, 1.0]])
    poisoned = LittleIsEnough(z=1.5).poison_updates(malicious, benign, generator=None)
    # honest rows: first coordinate 0, 2, 4, 6 -> mean 3, sample std sqrt(20/3)
    expected = 3.0 - 1.5 * (20 / 3) ** 0.5
    assert poisoned.shape == (1, 2)
    assert poisoned[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert poisoned[0, 1].item() == pytest.approx(1.0)


def test_malicious_clients_are_a_seeded_fraction():
    first = tiny_federation(num_clients=10, attack="sign-flip", malicious_fraction=0.3)
    again = tiny_federation(num_clients=10, attack="sign-flip", malicious_fraction=0.3)
    other = tiny_federation(num_clients=10, attack="sign-flip", malicious_fraction=0.3, seed=5)
    assert len(first.malicious) == 3
    assert first.malicious == again.malicious
    assert first.malicious != other.malicious
    assert tiny_federation(num_clients=10).malicious == frozenset()


def test_round_record_lists_the_sampled_malicious_clients():
    fed = tiny_federation(num_clients=10, attack="gaussian", malicious_fraction=0.3)
    (record,) = fed.run(1)
    assert record.values["malicious"] == sorted(fed.malicious)
    assert record.to_json()["malicious"] == sorted(fed.malicious)


def test_label_flipping_majority_destroys_fedavg():
    clean = tiny_federation(num_clients=8)
    flipped = tiny_federation(num_clients=8, attack="label-flip", malicious_fraction=0.75)
    assert clean.run(10)[-1].metrics["accuracy"] > 0.9
    assert flipped.run(10)[-1].metrics["accuracy"] < 0.3


def test_gaussian_attack_breaks_fedavg_but_not_the_median():
    def final(aggregator, attack):
        fed = tiny_federation(
            num_clients=10,
            attack=attack,
            options={"gaussian": {"sigma": 5.0}},
            aggregator=aggregator,
        )
        return fed.run(12)[-1].metrics["accuracy"]

    clean_median = final("median", None)
    assert final("fedavg", "gaussian") < 0.7
    assert clean_median > 0.85
    assert final("median", "gaussian") > clean_median - 0.03


@pytest.mark.parametrize("fraction", [-0.1, 1.0, "x"])
def test_malicious_fraction_is_checked(fraction):
    with pytest.raises(privfl.ConfigError, match="malicious_fraction"):
        tiny_federation(attack="label-flip", malicious_fraction=fraction)


@pytest.mark.parametrize(
    ("factory", "key"),
    [
        (lambda: SignFlip(scale=0), "scale = 0"),
        (lambda: GaussianAttack(sigma=float("inf")), "sigma = inf"),
        (lambda: LittleIsEnough(z=-1), "z = -1"),
    ],
)
def test_attack_options_are_checked(factory, key):
    with pytest.raises(privfl.ConfigError, match=key):
        factory()


def test_attack_options_from_a_table_name_the_table():
    registry = make_plugin_manager().components
    with pytest.raises(privfl.ConfigError, match=r"^sign-flip\.scale = 0 is not allowed"):
        registry.create("attack", "sign-flip", {"scale": 0})


def test_fedprox_keeps_local_models_near_the_global_one():
    plain = tiny_federation(training=privfl.LocalTraining(epochs=3, lr=0.1))
    prox = tiny_federation(training=privfl.LocalTraining(epochs=3, lr=0.1, proximal_mu=5.0))
    start = plain.params.clone()
    plain.run(1)
    prox.run(1)
    assert float((prox.params - start).norm()) < 0.7 * float((plain.params - start).norm())


def test_fedprox_mu_is_checked():
    with pytest.raises(privfl.ConfigError, match="proximal_mu"):
        privfl.LocalTraining(proximal_mu=-1.0)
