"""Tests of the rdp, pld and auto accountants against privacy values computed independently.

The reference values here use scipy only, not dp-accounting: the analytic Gaussian
mechanism of Balle and Wang 2018, the exact hockey-stick divergence of one
Poisson-subsampled Gaussian, and the RDP of the sampled Gaussian mechanism integrated
numerically as Mironov, Talwar and Zhang 2019 define it.
"""

from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

from privfl.builtin import auto_accountant, pld_accountant
from privfl.builtin.accountants import RdpPrivacyAccountant
from privfl.builtin.auto_accountant import PLD_MIN_NOISE, AutoPrivacyAccountant
from privfl.builtin.pld_accountant import PldPrivacyAccountant
from privfl.components import Sampling
from privfl.errors import ConfigError
from privfl.mechanisms import Accountant

DELTA = 1e-5
POISSON = Sampling("poisson", 1000, rate=0.1)
ALL = Sampling("all", 1000)
FIXED = Sampling("fixed", 1000, size=100)

ACCOUNTANTS: list[type[Accountant]] = [
    RdpPrivacyAccountant,
    PldPrivacyAccountant,
    AutoPrivacyAccountant,
]


def composed(cls: type[Accountant], sampling: Sampling, z: float, rounds: int) -> Accountant:
    accountant = cls()
    accountant.compose(sampling=sampling, noise_multiplier=z, rounds=rounds)
    return accountant


# --- Independent reference values -------------------------------------------------------


def solve_epsilon(delta_of_epsilon, delta: float) -> float:
    """Return the epsilon at which the decreasing ``delta_of_epsilon`` equals ``delta``."""
    if delta_of_epsilon(0.0) <= delta:
        return 0.0
    return optimize.brentq(lambda eps: delta_of_epsilon(eps) - delta, 0.0, 200.0, xtol=1e-12)


def analytic_gaussian_epsilon(z: float, delta: float) -> float:
    """Tight epsilon of the Gaussian mechanism, sensitivity 1 and std z (Balle and Wang 2018).

    ``delta(eps) = Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z)`` (their Theorem 8).
    """

    def delta_of(eps: float) -> float:
        high = stats.norm.cdf(1 / (2 * z) - eps * z)
        return high - math.exp(eps + stats.norm.logcdf(-1 / (2 * z) - eps * z))

    return solve_epsilon(delta_of, delta)


def poisson_gaussian_epsilon(q: float, z: float, delta: float) -> float:
    """Tight epsilon of one Poisson-subsampled Gaussian, adding or removing one client.

    With the client, the output is ``P = (1-q) N(0, z^2) + q N(1, z^2)``; without, ``Q =
    N(0, z^2)``. The privacy loss ``log p/q`` increases in x, so each hockey-stick
    divergence ``H_eps = int max(0, p - e^eps q)`` is a difference of normal tails past
    the point where the loss crosses ``eps``; delta is the larger of both directions.
    """

    def remove(eps: float) -> float:  # H_eps(P || Q): loss > eps beyond x0
        x0 = z * z * math.log((math.exp(eps) - (1 - q)) / q) + 0.5
        tail = stats.norm.sf
        return (1 - q) * tail(x0 / z) + q * tail((x0 - 1) / z) - math.exp(eps) * tail(x0 / z)

    def add(eps: float) -> float:  # H_eps(Q || P): loss < -eps below x0
        if math.exp(-eps) <= 1 - q:
            return 0.0
        x0 = z * z * math.log((math.exp(-eps) - (1 - q)) / q) + 0.5
        cdf = stats.norm.cdf
        return cdf(x0 / z) - math.exp(eps) * ((1 - q) * cdf(x0 / z) + q * cdf((x0 - 1) / z))

    return solve_epsilon(lambda eps: max(remove(eps), add(eps)), delta)


def sampled_gaussian_rdp(q: float, z: float, alpha: float) -> float:
    """RDP at order alpha of the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019).

    ``A_alpha = E_{x ~ N(0, z^2)} [((1-q) + q exp((2x - 1) / (2 z^2)))^alpha]`` and RDP is
    ``log(A_alpha) / (alpha - 1)``, integrated in log space: the integrand peaks near 0
    and near ``x = alpha`` (where the second component takes over).
    """

    log_q, log_1mq = math.log(q), math.log1p(-q)
    log_norm = math.log(z * math.sqrt(2 * math.pi))

    def log_integrand(x):  # float or array
        mixture = np.logaddexp(log_1mq, log_q + (2 * x - 1) / (2 * z * z))
        return alpha * mixture - x * x / (2 * z * z) - log_norm

    low, high = -40 * z, alpha + 40 * z
    grid = np.linspace(low, high, 4001)
    values = log_integrand(grid)
    peak = float(values.max())
    points = sorted({0.0, float(grid[values.argmax()]), min(float(alpha), high)})
    area, _ = integrate.quad(
        lambda x: math.exp(log_integrand(x) - peak),
        low,
        high,
        points=points,
        limit=500,
        epsabs=0,
        epsrel=1e-11,
    )
    return (peak + math.log(area)) / (alpha - 1)


def rdp_to_epsilon(orders, rdp, delta: float) -> float:
    """RDP-to-DP conversion, written out here from the papers dp-accounting cites.

    Per order: ``eps = r + log1p(-1/a) - log(delta * a) / (a - 1)`` (Canonne, Kamath,
    Steinke 2020, Proposition 12), or 0 where the KL bound ``delta >= sqrt(1 - e^-r)``
    already holds; orders within 1.01 of 1 are not used. The best order wins.
    """
    epsilons = []
    for a, r in zip(orders, rdp, strict=True):
        if delta**2 + math.expm1(-r) > 0:
            epsilons.append(0.0)
        elif a > 1.01:
            epsilons.append(r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1))
    return max(0.0, min(epsilons))


def classic_rdp_epsilon(orders, rdp, delta: float) -> float:
    """Mironov 2017, Proposition 3: ``eps = min_a r_a + log(1/delta) / (a - 1)``."""
    return min(r + math.log(1 / delta) / (a - 1) for a, r in zip(orders, rdp, strict=True))


# --- One Gaussian step, full participation ----------------------------------------------


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (0.8, 1), (4.0, 10)])
def test_pld_matches_the_analytic_gaussian_mechanism(z: float, rounds: int) -> None:
    # T Gaussian steps with multiplier z compose to one with z / sqrt(T).
    exact = analytic_gaussian_epsilon(z / math.sqrt(rounds), DELTA)
    epsilon = composed(PldPrivacyAccountant, ALL, z, rounds).epsilon(DELTA)
    # Pessimistic discretisation: an upper bound, within a grid step or so.
    assert exact <= epsilon <= exact + 2e-3


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (0.8, 1), (4.0, 10)])
def test_rdp_of_the_gaussian_mechanism_is_alpha_over_2_z_squared(z: float, rounds: int) -> None:
    accountant = composed(RdpPrivacyAccountant, ALL, z, rounds)
    orders = np.array(accountant.orders)
    rdp = rounds * orders / (2 * z * z)
    epsilon = accountant.epsilon(DELTA)
    assert epsilon == pytest.approx(rdp_to_epsilon(orders, rdp, DELTA), rel=1e-12)
    exact = analytic_gaussian_epsilon(z / math.sqrt(rounds), DELTA)
    assert exact < epsilon < classic_rdp_epsilon(orders, rdp, DELTA)


# --- Poisson sampling -------------------------------------------------------------------


INTEGER_ORDERS = (*range(2, 65), 128, 256, 512, 1024)


@pytest.fixture(scope="module")
def sampled_gaussian_rdp_curve() -> dict[float, float]:
    """RDP of one round at q = 0.1, z = 1 by integration, at the orders the tests use."""
    orders = {*RdpPrivacyAccountant().orders, *INTEGER_ORDERS}
    return {alpha: sampled_gaussian_rdp(0.1, 1.0, alpha) for alpha in orders}


def test_integrated_rdp_matches_the_closed_form_at_integer_orders() -> None:
    """Check the integration itself: at integer alpha, A_alpha is a binomial sum (MTZ19 3.1)."""
    q, z = 0.1, 1.0
    for alpha in (2, 7, 30):
        terms = [
            special.comb(alpha, k) * (1 - q) ** (alpha - k) * q**k * math.exp((k * k - k) / (2 * z))
            for k in range(alpha + 1)
        ]
        closed = math.log(math.fsum(terms)) / (alpha - 1)
        assert sampled_gaussian_rdp(q, z, alpha) == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("rounds", [20, 100])
def test_rdp_poisson_matches_numerical_integration(
    sampled_gaussian_rdp_curve: dict[float, float], rounds: int
) -> None:
    def independent(orders: tuple[float, ...]) -> float:
        rdp = [rounds * sampled_gaussian_rdp_curve[alpha] for alpha in orders]
        return rdp_to_epsilon(orders, rdp, DELTA)

    # At integer orders dp-accounting sums the exact binomial expansion: tight agreement.
    exact_orders = RdpPrivacyAccountant(orders=INTEGER_ORDERS)
    exact_orders.compose(sampling=POISSON, noise_multiplier=1.0, rounds=rounds)
    assert exact_orders.epsilon(DELTA) == pytest.approx(independent(INTEGER_ORDERS), rel=1e-7)
    # At fractional orders dp-accounting 0.6.0 adds the absolute values of the
    # alternating terms of its series (log |binom(alpha, i)|), an upper bound on
    # A_alpha (by 20% at order 1.6, 1e-4 at 5.5): the default orders give a valid
    # epsilon a little above the exact one (4.22429 vs 4.22401 at T = 20, 7.9039 vs
    # 7.8993 at T = 100).
    default_orders = composed(RdpPrivacyAccountant, POISSON, 1.0, rounds)
    exact = independent(default_orders.orders)
    assert exact <= default_orders.epsilon(DELTA) <= exact * 1.001


def test_pld_one_poisson_round_matches_the_exact_hockey_stick_divergence() -> None:
    exact = poisson_gaussian_epsilon(0.1, 1.0, DELTA)
    epsilon = composed(PldPrivacyAccountant, POISSON, 1.0, 1).epsilon(DELTA)
    assert exact <= epsilon <= exact + 2e-3


@pytest.mark.parametrize("rounds", [20, 100])
def test_pld_poisson_is_tighter_than_rdp_and_sane(rounds: int) -> None:
    rdp = composed(RdpPrivacyAccountant, POISSON, 1.0, rounds).epsilon(DELTA)
    pld = composed(PldPrivacyAccountant, POISSON, 1.0, rounds).epsilon(DELTA)
    one_round = poisson_gaussian_epsilon(0.1, 1.0, DELTA)
    # Composition only adds privacy loss; PLD is tighter than RDP, but not by much
    # (RDP-to-DP conversion loses 10-20% here).
    assert one_round < pld < rdp < 1.25 * pld


# --- Fixed-size sampling ----------------------------------------------------------------


def test_rdp_accounts_fixed_size_sampling_for_replacing_one_client() -> None:
    accountant = RdpPrivacyAccountant()
    assert accountant.neighbouring == "add or remove one client"
    accountant.compose(sampling=FIXED, noise_multiplier=2.0, rounds=50)
    assert accountant.neighbouring == "replace one client's data"
    subsampled = accountant.epsilon(DELTA)
    assert 0 < subsampled < math.inf
    # With the whole population sampled, replacing one client moves the sum by 2C:
    # a Gaussian with RDP alpha * (2C)^2 / (2 (zC)^2) = 2 alpha / z^2 per round.
    everyone = composed(RdpPrivacyAccountant, Sampling("fixed", 100, size=100), 2.0, 50)
    orders = np.array(everyone.orders)
    expected = rdp_to_epsilon(orders, 50 * 2 * orders / 2.0**2, DELTA)
    assert everyone.epsilon(DELTA) == pytest.approx(expected, rel=1e-12)
    # Sampling 10% amplifies privacy.
    assert subsampled < everyone.epsilon(DELTA)


def test_pld_refuses_fixed_size_sampling() -> None:
    accountant = PldPrivacyAccountant()
    with pytest.raises(ConfigError, match=r"--sampler poisson --sample-rate Q.*rdp") as error:
        accountant.compose(sampling=FIXED, noise_multiplier=1.0)
    assert error.value.key == "accountant"
    with pytest.raises(ConfigError, match="fixed-size"):
        accountant.epsilon_after(sampling=FIXED, noise_multiplier=1.0, rounds=0, delta=DELTA)
    assert accountant.epsilon(DELTA) == 0.0


def test_one_accountant_does_not_mix_neighbouring_relations() -> None:
    replace_one = composed(RdpPrivacyAccountant, FIXED, 1.0, 3)
    add_remove = composed(RdpPrivacyAccountant, POISSON, 1.0, 3)
    for accountant, other in [(replace_one, POISSON), (replace_one, ALL), (add_remove, FIXED)]:
        before = accountant.state_dict()
        with pytest.raises(ConfigError, match="cannot mix relations"):
            accountant.compose(sampling=other, noise_multiplier=1.0)
        assert accountant.state_dict() == before


# --- State, epsilon_after and validation ------------------------------------------------


@pytest.mark.parametrize("cls", ACCOUNTANTS)
def test_epsilon_is_zero_before_any_round(cls: type[Accountant]) -> None:
    accountant = cls()
    assert accountant.epsilon(DELTA) == 0.0
    assert accountant.state_dict() == {"accountant": cls.name, "composed": []}
    accountant.compose(sampling=POISSON, noise_multiplier=1.0, rounds=0)
    assert accountant.epsilon(DELTA) == 0.0


@pytest.mark.parametrize("cls", ACCOUNTANTS)
def test_state_round_trip_gives_the_same_epsilon(cls: type[Accountant]) -> None:
    accountant = cls()
    accountant.compose(sampling=POISSON, noise_multiplier=1.0, rounds=30)
    for _ in range(3):  # round by round, as the federation composes
        accountant.compose(sampling=POISSON, noise_multiplier=0.8)
    accountant.compose(sampling=ALL, noise_multiplier=3.0, rounds=2)
    accountant.compose(sampling=ALL, noise_multiplier=3.0)
    state = json.loads(json.dumps(accountant.state_dict()))
    assert [run["rounds"] for run in state["composed"]] == [30, 3, 3]
    assert state["composed"][1] == {
        "kind": "poisson",
        "population": 1000,
        "rate": 0.1,
        "size": None,
        "noise_multiplier": 0.8,
        "rounds": 3,
    }

    resumed = cls()
    resumed.compose(sampling=POISSON, noise_multiplier=5.0, rounds=7)  # replaced by the load
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    for delta in (1e-3, DELTA, 1e-9):
        assert resumed.epsilon(delta) == accountant.epsilon(delta)
    # The resumed run goes on exactly like the original.
    for each in (accountant, resumed):
        each.compose(sampling=ALL, noise_multiplier=3.0)
    assert resumed.epsilon(DELTA) == accountant.epsilon(DELTA)


@pytest.mark.parametrize("cls", ACCOUNTANTS)
def test_load_refuses_foreign_or_malformed_states(cls: type[Accountant]) -> None:
    other = {"rdp": "pld", "pld": "rdp", "auto": "counting"}[cls.name]
    accountant = cls()
    with pytest.raises(ValueError, match="not a state of the"):
        accountant.load_state_dict({"accountant": other, "composed": []})
    with pytest.raises(ValueError, match="not a state of the"):
        accountant.load_state_dict({})
    bad_run = {"kind": "poisson", "population": 10, "rate": 0.1, "noise_multiplier": 1.0}
    with pytest.raises(ValueError, match="keys"):
        accountant.load_state_dict({"accountant": cls.name, "composed": [bad_run]})
    with pytest.raises(ConfigError, match="noise_multiplier"):
        accountant.load_state_dict(
            {
                "accountant": cls.name,
                "composed": [{**bad_run, "size": None, "rounds": 1, "noise_multiplier": -1}],
            }
        )
    assert accountant.epsilon(DELTA) == 0.0


@pytest.mark.parametrize("cls", ACCOUNTANTS)
def test_epsilon_after_leaves_the_state_alone(cls: type[Accountant]) -> None:
    accountant = composed(cls, POISSON, 1.0, 10)
    state, epsilon = accountant.state_dict(), accountant.epsilon(DELTA)
    after = accountant.epsilon_after(sampling=POISSON, noise_multiplier=1.0, rounds=5, delta=DELTA)
    different = accountant.epsilon_after(
        sampling=POISSON, noise_multiplier=2.0, rounds=5, delta=DELTA
    )
    assert accountant.state_dict() == state
    assert accountant.epsilon(DELTA) == epsilon
    assert epsilon < different < after
    zero_more = accountant.epsilon_after(
        sampling=POISSON, noise_multiplier=1.0, rounds=0, delta=DELTA
    )
    assert zero_more == epsilon
    accountant.compose(sampling=POISSON, noise_multiplier=1.0, rounds=5)
    assert accountant.epsilon(DELTA) == after


@pytest.mark.parametrize("cls", ACCOUNTANTS)
@pytest.mark.parametrize("delta", [0, 1, -1e-5, 2.0, math.nan, True, "1e-5"])
def test_bad_delta_is_a_config_error(cls: type[Accountant], delta: object) -> None:
    accountant = composed(cls, ALL, 1.0, 1)
    with pytest.raises(ConfigError, match=rf"^delta = {re.escape(repr(delta))} ") as error:
        accountant.epsilon(delta)  # type: ignore[arg-type]
    assert error.value.key == "delta"
    with pytest.raises(ConfigError, match=r"^delta = "):
        accountant.epsilon_after(sampling=POISSON, noise_multiplier=1.0, rounds=1, delta=delta)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", ACCOUNTANTS)
@pytest.mark.parametrize("z", [0, 0.0, -1.0, math.inf, math.nan, True, "1"])
def test_bad_noise_multiplier_is_a_config_error(cls: type[Accountant], z: object) -> None:
    accountant = cls()
    with pytest.raises(ConfigError, match=rf"^noise_multiplier = {re.escape(repr(z))} "):
        accountant.compose(sampling=POISSON, noise_multiplier=z)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^noise_multiplier = "):
        accountant.epsilon_after(sampling=POISSON, noise_multiplier=z, rounds=1, delta=DELTA)  # type: ignore[arg-type]
    assert accountant.state_dict()["composed"] == []


@pytest.mark.parametrize("rounds", [-1, 1.5, True])
def test_bad_rounds_is_a_config_error(rounds: object) -> None:
    with pytest.raises(ConfigError, match=r"^rounds = "):
        RdpPrivacyAccountant().compose(sampling=POISSON, noise_multiplier=1.0, rounds=rounds)  # type: ignore[arg-type]


def test_constructor_options_are_checked() -> None:
    for orders in ([], [0.5, 2], [1.0], "23", [2, math.inf]):
        with pytest.raises(ConfigError, match=r"^orders = "):
            RdpPrivacyAccountant(orders=orders)  # type: ignore[arg-type]
    assert RdpPrivacyAccountant(orders=[2, 3.5, 32]).orders == (2.0, 3.5, 32.0)
    for interval in (0, -1e-3, 1.0, math.nan):
        with pytest.raises(ConfigError, match=r"^value_discretization_interval = "):
            PldPrivacyAccountant(value_discretization_interval=interval)


def test_coarser_pld_grid_costs_little_epsilon() -> None:
    coarse = composed(PldPrivacyAccountant, POISSON, 1.0, 20).epsilon(DELTA)
    fine = PldPrivacyAccountant(value_discretization_interval=1e-4)
    fine.compose(sampling=POISSON, noise_multiplier=1.0, rounds=20)
    assert fine.epsilon(DELTA) <= coarse <= fine.epsilon(DELTA) * (1 + 1e-4)


def test_rdp_hides_dp_accountings_convergence_warnings(caplog: pytest.LogCaptureFixture) -> None:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.rdp import RdpAccountant

    event = PoissonSampledDpEvent(0.1, GaussianDpEvent(1.0))
    with caplog.at_level(logging.WARNING, logger="absl"):
        RdpAccountant().compose(event, 5)  # dp-accounting directly does log them
    assert any("failed to converge" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        accountant = composed(RdpPrivacyAccountant, POISSON, 1.0, 5)
        accountant.epsilon(DELTA)
        accountant.epsilon_after(sampling=POISSON, noise_multiplier=1.0, rounds=3, delta=DELTA)
    assert caplog.records == []
    assert logging.getLogger("absl").filters == []


# --- Incremental PLD composition --------------------------------------------------------


def test_pld_composed_round_by_round_gives_the_bits_of_a_checkpoint_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
    from dp_accounting.pld import PLDAccountant

    monkeypatch.setattr(pld_accountant, "PLD_BLOCK", 4)  # cross block boundaries in a few rounds
    live = PldPrivacyAccountant()
    for rounds in range(1, 10):
        live.compose(sampling=POISSON, noise_multiplier=2.0)
        loaded = PldPrivacyAccountant()
        loaded.load_state_dict(live.state_dict())
        assert loaded.epsilon(DELTA) == live.epsilon(DELTA)
        if rounds in (4, 9):
            # The PLD of dp-accounting's accountant composing the rounds in one call.
            reference = PLDAccountant(value_discretization_interval=1e-3)
            reference.compose(PoissonSampledDpEvent(0.1, GaussianDpEvent(2.0)), rounds)
            assert live.epsilon(DELTA) == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)
    assert live.epsilon_after(
        sampling=POISSON, noise_multiplier=2.0, rounds=3, delta=DELTA
    ) == composed(PldPrivacyAccountant, POISSON, 2.0, 12).epsilon(DELTA)


# --- The auto accountant ----------------------------------------------------------------


def same_rounds(rounds: list[tuple[Sampling, float, int]]) -> list[Accountant]:
    """auto, rdp and (without fixed-size rounds) pld, given the same rounds one call each."""
    each: list[Accountant] = [AutoPrivacyAccountant(), RdpPrivacyAccountant()]
    if all(sampling.kind != "fixed" for sampling, _, _ in rounds):
        each.append(PldPrivacyAccountant())
    for accountant in each:
        for sampling, z, count in rounds:
            accountant.compose(sampling=sampling, noise_multiplier=z, rounds=count)
    return each


@pytest.mark.parametrize("sampling", [POISSON, ALL])
def test_auto_is_pld_for_poisson_sampling_and_everyone(sampling: Sampling) -> None:
    auto, rdp, pld = same_rounds([(sampling, 1.0, 5), (sampling, 1.0, 1), (sampling, 2.0, 3)])
    assert auto.method.startswith("pld: ")
    assert auto.epsilon(DELTA) == pld.epsilon(DELTA) < rdp.epsilon(DELTA)
    assert auto.neighbouring == "add or remove one client"


def test_auto_is_rdp_for_a_fixed_size_cohort() -> None:
    check = AutoPrivacyAccountant()
    check.compose(sampling=FIXED, noise_multiplier=1.0, rounds=0)  # accepted, nothing composed
    assert check.state_dict() == {"accountant": "auto", "composed": []}
    auto, rdp = same_rounds([(FIXED, 1.0, 20)])
    assert auto.method.startswith("rdp: a fixed-size cohort")
    assert auto.epsilon(DELTA) == rdp.epsilon(DELTA)
    assert auto.neighbouring == "replace one client's data"


def test_auto_is_rdp_where_pld_grid_would_be_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    # At z = 1e-9 dp-accounting's PLD fails ("Maximum allowed size exceeded").
    with pytest.raises(ValueError, match="Maximum allowed size"):
        composed(PldPrivacyAccountant, POISSON, 1e-9, 1)
    auto = composed(AutoPrivacyAccountant, POISSON, 1e-9, 1)
    assert auto.method.startswith(f"rdp: noise multiplier 1e-09 < {PLD_MIN_NOISE:g}")
    assert auto.epsilon(DELTA) == composed(RdpPrivacyAccountant, POISSON, 1e-9, 1).epsilon(DELTA)
    # Everyone at z = 1: PLD up to sum(rounds / z^2) = 100 (10 here, to stay fast), then
    # RDP for the whole run.
    monkeypatch.setattr(auto_accountant, "PLD_MAX_MU_SQUARED", 10.0)
    auto, rdp, pld = same_rounds([(ALL, 1.0, 10)])
    assert auto.method.startswith("pld: ")
    assert auto.epsilon(DELTA) == pld.epsilon(DELTA)
    auto.compose(sampling=ALL, noise_multiplier=1.0)
    rdp.compose(sampling=ALL, noise_multiplier=1.0)
    assert auto.method.startswith("rdp: sum of rounds q^2/z^2 11 > 10")
    assert auto.epsilon(DELTA) == rdp.epsilon(DELTA) > pld.epsilon(DELTA)


def test_auto_switches_to_rdp_for_good_and_resumes_with_the_same_bits() -> None:
    auto = AutoPrivacyAccountant()
    auto.compose(sampling=POISSON, noise_multiplier=1.0, rounds=3)
    assert auto.method.startswith("pld")
    predicted = auto.epsilon_after(sampling=POISSON, noise_multiplier=0.25, rounds=1, delta=DELTA)
    now = auto.epsilon_after(sampling=POISSON, noise_multiplier=0.25, rounds=0, delta=DELTA)
    auto.compose(sampling=POISSON, noise_multiplier=0.25, rounds=0)
    assert auto.method.startswith("pld")  # predictions and checks change nothing
    assert now == auto.epsilon(DELTA)
    auto.compose(sampling=POISSON, noise_multiplier=0.25)
    auto.compose(sampling=POISSON, noise_multiplier=1.0)  # stays with rdp
    assert auto.method.startswith("rdp: noise multiplier 0.25")
    _, rdp, _ = same_rounds([(POISSON, 1.0, 3), (POISSON, 0.25, 1), (POISSON, 1.0, 1)])
    assert auto.epsilon(DELTA) == rdp.epsilon(DELTA) > predicted
    state = json.loads(json.dumps(auto.state_dict()))
    assert state["accountant"] == "auto"
    assert [run["rounds"] for run in state["composed"]] == [3, 1, 1]
    resumed = AutoPrivacyAccountant()
    resumed.load_state_dict(state)
    assert (resumed.method, resumed.epsilon(DELTA)) == (auto.method, auto.epsilon(DELTA))


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_auto_resumes_a_checkpoint_of_rdp_or_pld_with_that_accountant(name: str) -> None:
    """A run checkpointed when rdp was the default goes on with rdp, epsilon unchanged."""
    old = {"rdp": RdpPrivacyAccountant, "pld": PldPrivacyAccountant}[name]()
    old.compose(sampling=POISSON, noise_multiplier=1.0, rounds=4)
    auto = AutoPrivacyAccountant()
    auto.load_state_dict(old.state_dict())
    for each in (old, auto):
        each.compose(sampling=POISSON, noise_multiplier=1.0)
    assert auto.epsilon(DELTA) == old.epsilon(DELTA)
    assert auto.method.startswith(f"{name}: the accountant of the checkpoint")
    assert auto.state_dict() == old.state_dict()


def test_auto_passes_its_options_on() -> None:
    with pytest.raises(ConfigError, match=r"^orders = "):
        AutoPrivacyAccountant(orders=[0.5])
    with pytest.raises(ConfigError, match=r"^value_discretization_interval = "):
        AutoPrivacyAccountant(value_discretization_interval=0).compose(
            sampling=POISSON, noise_multiplier=1.0
        )
    coarse = AutoPrivacyAccountant(value_discretization_interval=1e-2)
    coarse.compose(sampling=POISSON, noise_multiplier=1.0, rounds=5)
    default = composed(AutoPrivacyAccountant, POISSON, 1.0, 5).epsilon(DELTA)
    assert default < coarse.epsilon(DELTA) < default * 1.1
