"""Robust aggregation rules: hand-computed examples, breakdown bounds, validation, speed path."""

from __future__ import annotations

import math

import pytest
import torch

import privfl
from privfl.algorithms import aggregation
from privfl.algorithms.aggregation import (
    coordinate_median,
    krum,
    krum_scores,
    multi_krum,
    trimmed_mean,
)
from privfl.builtin.aggregators import FedAvg, Krum, Median, MultiKrum, TrimmedMean
from privfl.plugins import get_plugin_manager
from privfl.testing import tiny_federation

# Five clients, two coordinates; the last client is far off in both.
FIVE = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, -50.0]])


def test_trimmed_mean_by_hand():
    # beta 0.2, n 5: k = floor(1.0) = 1 value cut at each end of each coordinate.
    # coordinate 0: 1, 2, 3, 4, 100 -> drop 1 and 100 -> (2 + 3 + 4) / 3 = 3
    # coordinate 1: -50, 10, 20, 30, 40 -> drop -50 and 40 -> (10 + 20 + 30) / 3 = 20
    assert trimmed_mean(FIVE, 0.2).tolist() == [3.0, 20.0]
    # beta 0.1, n 5: k = floor(0.5) = 0, the plain mean: (110 / 5, 50 / 5)
    assert trimmed_mean(FIVE, 0.1).tolist() == [22.0, 10.0]


def test_median_by_hand_odd_and_even():
    # odd n: the middle value, 3 of (1, 2, 3, 4, 100) and 20 of (-50, 10, 20, 30, 40)
    assert coordinate_median(FIVE).tolist() == [3.0, 20.0]
    even = torch.tensor([[1.0, 5.0], [2.0, 7.0], [10.0, 6.0], [4.0, -1.0]])
    # even n: mean of the two middle values, (2 + 4) / 2 = 3 and (5 + 6) / 2 = 5.5
    assert coordinate_median(even).tolist() == [3.0, 5.5]
    assert coordinate_median(torch.tensor([[7.0, -1.0]])).tolist() == [7.0, -1.0]


def test_krum_and_multi_krum_by_hand():
    # Points 0, 1, 2, 4, 20 on the first axis; f = 1, n = 5: sum the n - f - 2 = 2
    # smallest squared distances to the others.
    #   0: 1, 4, 16, 400 -> 1 + 4 = 5        1: 1, 1, 9, 361 -> 1 + 1 = 2
    #   2: 4, 1, 4, 324 -> 1 + 4 = 5         4: 16, 9, 4, 256 -> 4 + 9 = 13
    #   20: 400, 361, 324, 256 -> 256 + 324 = 580
    updates = torch.tensor([[0.0, 3.0], [1.0, 3.0], [2.0, 3.0], [4.0, 3.0], [20.0, 3.0]])
    assert krum_scores(updates, 1).tolist() == [5.0, 2.0, 5.0, 13.0, 580.0]
    assert krum(updates, 1).tolist() == [1.0, 3.0]
    # m = 3 best scores: clients 1, 0, 2 -> mean (0 + 1 + 2) / 3 = 1
    assert multi_krum(updates, 1, 3).tolist() == [1.0, 3.0]
    # selected 0 -> m = n - f = 4: clients 1, 0, 2, 3 -> (0 + 1 + 2 + 4) / 4 = 1.75
    assert multi_krum(updates, 1).tolist() == [1.75, 3.0]
    # m = n is the plain mean: 27 / 5
    assert multi_krum(updates, 1, 5)[0].item() == pytest.approx(5.4)


def _honest_and_outliers(attackers: int, n: int = 10, dim: int = 50, value: float = 1e6):
    honest = torch.randn(n - attackers, dim, generator=torch.Generator().manual_seed(0))
    return torch.cat([honest, torch.full((attackers, dim), value)]), honest


def _inside(result: torch.Tensor, honest: torch.Tensor) -> bool:
    return bool(((result >= honest.min(dim=0).values) & (result <= honest.max(dim=0).values)).all())


@pytest.mark.parametrize(
    "rule",
    [
        lambda u: trimmed_mean(u, 0.2),  # k = 2 >= f = 2
        coordinate_median,  # f = 2 < n / 2 = 5
        lambda u: krum(u, 2),  # 2 * 2 + 2 = 6 < 10
        lambda u: multi_krum(u, 2),
    ],
    ids=["trimmed-mean", "median", "krum", "multi-krum"],
)
def test_rules_within_their_bound_stay_in_the_honest_range(rule):
    updates, honest = _honest_and_outliers(attackers=2)
    assert _inside(rule(updates), honest)
    assert not _inside(aggregation.fedavg(updates, torch.ones(10)), honest)


def test_rules_beyond_their_bound_break_down():
    # Median: 6 of 10 at 1e6, the two middle values are both 1e6.
    updates, honest = _honest_and_outliers(attackers=6)
    assert coordinate_median(updates).eq(1e6).all()
    # Trimmed mean with k = floor(0.1 * 10) = 1 < f = 2: one outlier stays in the mean.
    updates, honest = _honest_and_outliers(attackers=2)
    assert not _inside(trimmed_mean(updates, 0.1), honest)
    # Krum told f = 2 facing 6 identical attackers: their scores are 0, one of them wins.
    updates, honest = _honest_and_outliers(attackers=6)
    assert krum(updates, 2).eq(1e6).all()


def test_trimmed_values_are_masked_not_subtracted():
    # Subtracting 1e30 and infinities from a sum would lose the 1, 2, 3 (or give NaN).
    updates = torch.tensor([[math.inf, 1e30], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [-math.inf, 0]])
    assert trimmed_mean(updates, 0.2).tolist() == [2.0, 2.0]
    assert coordinate_median(updates).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [7, 8])
def test_blocked_sort_matches_a_plain_sort(n, dtype):
    # More coordinates than one block (and not a multiple of it), so several threads
    # share the work and the last block is short.
    dim = 3 * aggregation._SORT_COLUMNS + 17
    updates = torch.randn(n, dim, generator=torch.Generator().manual_seed(n), dtype=dtype)
    ordered = updates.sort(dim=0).values
    k = math.floor(0.3 * n)
    tol = {"rtol": 1e-6, "atol": 1e-6}
    torch.testing.assert_close(trimmed_mean(updates, 0.3), ordered[k : n - k].mean(dim=0), **tol)
    middle = ordered[(n - 1) // 2 : n // 2 + 1].mean(dim=0)
    torch.testing.assert_close(coordinate_median(updates), middle, **tol)
    assert trimmed_mean(updates, 0.3).dtype == dtype


def _tied_updates(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[n, dim]`` updates over more than two sort blocks, with many tied values.

    Half the coordinates draw from seven integers (ties within almost every coordinate,
    also at the trimming boundaries), the other half are normal values rounded to one
    decimal; one coordinate is constant and one holds +-infinity among the extremes.
    """
    dim = 2 * aggregation._SORT_COLUMNS + 37
    generator = torch.Generator().manual_seed(1000 + n)
    updates = torch.randn(n, dim, generator=generator, dtype=torch.float64).mul(10).round()
    updates[:, ::2] = torch.randint(-3, 4, (n, (dim + 1) // 2), generator=generator).double()
    updates[:, 1] = 2.5
    updates = updates.div(10).to(dtype)
    if n >= 5:
        updates[0, 3], updates[1, 3] = math.inf, -math.inf
    return updates


def _sorted_reference(updates: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """Mean of the sorted values ``first .. stop - 1`` of each coordinate, in float64."""
    ordered = updates.double().sort(dim=0).values
    return ordered[first:stop].mean(dim=0).to(updates.dtype)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 33, 100, 150])
@pytest.mark.parametrize("trim_fraction", [0.0, 0.1, 0.2, 0.25, 0.49])
def test_trimmed_mean_matches_a_sort_reference_with_ties(n, trim_fraction):
    updates = _tied_updates(n)
    k = math.floor(trim_fraction * n)
    expected = _sorted_reference(updates, k, n - k)
    result = trimmed_mean(updates, trim_fraction)
    assert result.dtype == updates.dtype
    assert result.shape == expected.shape
    # Only the summation order differs from the reference (and +-inf stay out of the
    # mean whenever k >= 1).
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 33, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_median_matches_a_sort_reference_with_ties(n, dtype):
    updates = _tied_updates(n, dtype)
    expected = _sorted_reference(updates, (n - 1) // 2, n // 2 + 1)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(coordinate_median(updates), expected, **tol, equal_nan=True)


def test_sorting_rules_do_not_depend_on_the_number_of_threads():
    updates = _tied_updates(100)
    updates += torch.randn(updates.shape, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append((trimmed_mean(updates, 0.1), coordinate_median(updates)))
    finally:
        torch.set_num_threads(threads)
    for trimmed, median in results[1:]:
        assert torch.equal(trimmed, results[0][0])
        assert torch.equal(median, results[0][1])


def test_krum_bound_error_names_both_numbers():
    updates = torch.zeros(7, 3)
    with pytest.raises(privfl.ConfigError) as error:
        krum(updates, 3)
    message = str(error.value)
    assert error.value.key == "byzantine"
    assert "2 * byzantine + 2 < updates received" in message
    assert "2 * 3 + 2 = 8 is not < 7" in message
    assert "with 7 updates byzantine can be at most 2" in message
    assert "needs at least 9 updates (short by 2)" in message
    with pytest.raises(privfl.ConfigError, match=r"2 updates are too few .* \(Krum needs 3\)"):
        multi_krum(torch.zeros(2, 3), 0)
    with pytest.raises(privfl.ConfigError, match=r"selected = 6 .* received \(5\), short by 1"):
        multi_krum(torch.zeros(5, 3), 1, 6)


@pytest.mark.parametrize("value", [0.5, -0.1, 1, True, "0.1"])
def test_trim_fraction_range_is_checked(value):
    with pytest.raises(privfl.ConfigError, match=r"trim_fraction = .* \[0, 0\.5\)"):
        trimmed_mean(FIVE, value)
    with pytest.raises(privfl.ConfigError, match="2 \\* floor\\(trim_fraction \\* n\\) < n"):
        TrimmedMean(trim_fraction=value)


@pytest.mark.parametrize(
    ("factory", "key"),
    [
        (lambda: Krum(byzantine=-1), "byzantine"),
        (lambda: Krum(byzantine=1.5), "byzantine"),
        (lambda: MultiKrum(byzantine=True), "byzantine"),
        (lambda: MultiKrum(selected=-1), "selected"),
    ],
)
def test_aggregator_options_are_checked(factory, key):
    with pytest.raises(privfl.ConfigError, match=f"^{key} = "):
        factory()


def test_krum_refuses_non_finite_updates():
    with pytest.raises(ValueError, match="finite"):
        krum(torch.tensor([[0.0], [1.0], [math.nan], [2.0]]), 0)


def test_robust_aggregators_are_registered_and_refuse_secure_sums():
    entries = get_plugin_manager(autoload=False).components.entries("aggregator")
    robust = ["krum", "median", "multi-krum", "trimmed-mean"]
    assert sorted(entries) == sorted(["fedavg", *robust])
    assert entries["fedavg"].cls.works_on_secure_sum
    assert not any(entries[name].cls.works_on_secure_sum for name in robust)
    assert Median().aggregate(FIVE, torch.ones(5)).tolist() == [3.0, 20.0]


@pytest.mark.parametrize("name", ["trimmed-mean", "median", "krum", "multi-krum"])
def test_robust_aggregators_run_in_a_federation(name):
    # 6 clients so that Krum with byzantine = 1 has 2 * 1 + 2 < 6.
    fed = tiny_federation(
        num_clients=6,
        aggregator=name,
        options={
            "trimmed-mean": {"trim_fraction": 0.2},
            "krum": {"byzantine": 1},
            "multi-krum": {"byzantine": 1, "selected": 3},
        },
    )
    start = fed.params.clone()
    records = fed.run(2)
    assert len(records) == 2
    assert torch.isfinite(fed.params).all()
    assert not torch.equal(fed.params, start)
    assert records[-1].metrics["accuracy"] > 0.6


def test_a_fixed_cohort_below_krums_bound_is_refused_before_any_round():
    with pytest.raises(privfl.ConfigError, match="krum needs at least 5") as info:
        tiny_federation(num_clients=4, sampler="all", aggregator="krum")
    assert "byzantine" in str(info.value)
    tiny_federation(num_clients=5, sampler="all", aggregator="krum")  # 5 = 2 * 1 + 3


def test_a_round_below_the_bound_is_skipped_not_the_run():
    class RejectClientZero:
        @privfl.hookimpl
        def privfl_update_received(self, result):
            return "refused by the test" if result.client_id == 0 else None

    fed = tiny_federation(
        num_clients=5, sampler="all", aggregator="krum", plugins=[RejectClientZero()]
    )
    before = fed.params.clone()
    first, second = fed.run(2)
    assert first.values["aborted"] == "4 updates accepted; krum needs at least 5"
    assert second.values["aborted"] == first.values["aborted"]
    assert torch.equal(fed.params, before)


def test_fedavg_norm_bound_clips_each_update_before_averaging():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [3e38, 3e38]])
    weights = torch.tensor([1.0, 1.0, 2.0])
    bounded = FedAvg(norm_bound=1.0).aggregate(updates, weights)
    rows = torch.tensor([[0.6, 0.8], [0.3, 0.4], [2**-0.5, 2**-0.5]])
    assert torch.allclose(bounded, (rows * weights[:, None]).sum(0) / 4)
    assert torch.equal(FedAvg().aggregate(updates[:2], weights[:2]), torch.tensor([1.65, 2.2]))


def test_fedavg_norm_bound_keeps_a_scaled_attack_from_wrecking_the_average():
    plain = tiny_federation(num_clients=8, attack="gaussian", malicious_fraction=0.25)
    bounded = tiny_federation(
        num_clients=8,
        attack="gaussian",
        malicious_fraction=0.25,
        options={"fedavg": {"norm_bound": 0.5}},
    )
    steps = []
    for fed in (plain, bounded):
        before = fed.params.clone()
        fed.run(1)
        steps.append(float((fed.params - before).norm()))
    assert steps[1] <= 0.5 * (1 + 1e-5)  # a mean of updates of norm <= 0.5
    assert steps[0] > 0.5  # unbounded, the attackers' noise moves the model further


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "1"])
def test_fedavg_norm_bound_must_be_a_positive_number(value):
    with pytest.raises(privfl.ConfigError, match="norm_bound"):
        FedAvg(norm_bound=value)


@pytest.mark.parametrize("mechanism", ["secagg", "dp"])
def test_fedavg_norm_bound_needs_the_updates_the_server_sees(mechanism):
    with pytest.raises(privfl.ConfigError, match="must see every client's update"):
        tiny_federation(
            mechanisms=[mechanism],
            options={"fedavg": {"norm_bound": 1.0}, "dp": {"secure_noise": True}},
        )
