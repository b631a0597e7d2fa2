"""Degree and threshold from the rates (Bell et al. 2020), graphs and round settings."""

import math

import numpy as np
import pytest
from scipy import stats

from privfl.errors import ConfigError
from privfl.secagg import (
    SecAggConfig,
    complete_graph,
    harary_graph,
    secagg_config,
    secagg_plus_parameters,
    secagg_threshold,
)


@pytest.mark.parametrize(
    ("n", "dropout", "corruption"),
    [(100, 0.1, 0.1), (1000, 0.1, 0.05), (1000, 0.3, 0.1), (5000, 0.05, 0.05)],
)
def test_parameters_meet_the_criterion_checked_with_scipy(n, dropout, corruption):
    k, t = secagg_plus_parameters(n, dropout_rate=dropout, corruption_rate=corruption)
    assert k % 2 == 0
    assert 1 <= t <= k < n - 1
    dropped, corrupted = math.floor(dropout * n + 1e-9), math.floor(corruption * n + 1e-9)
    survivors = stats.hypergeom(n - 1, n - 1 - dropped, k)  # surviving neighbours
    adversaries = stats.hypergeom(n - 1, corrupted, k)  # corrupted neighbours
    assert n * survivors.cdf(t - 1) <= 2.0**-30  # correctness (eta = 30)
    assert n * adversaries.sf(t - 1) <= 2.0**-41  # security (sigma = 40, half of it)
    assert n * survivors.cdf(t) > 2.0**-30  # t is the largest correct threshold


def test_degree_grows_logarithmically():
    rates = {"dropout_rate": 0.1, "corruption_rate": 0.1}
    degrees = [secagg_plus_parameters(n, **rates)[0] for n in (100, 1000, 10_000)]
    assert degrees == sorted(degrees)
    assert degrees[1] < 999 / 10  # k(1000) is far below the complete graph's 999
    assert degrees[2] - degrees[1] < degrees[1]  # 10x the clients, much less than 2x k


def test_higher_rates_or_security_never_shrink_the_degree():
    base = secagg_plus_parameters(1000, dropout_rate=0.1, corruption_rate=0.1)
    more_dropouts = secagg_plus_parameters(1000, dropout_rate=0.2, corruption_rate=0.1)
    more_corrupt = secagg_plus_parameters(1000, dropout_rate=0.1, corruption_rate=0.2)
    stricter = secagg_plus_parameters(1000, dropout_rate=0.1, corruption_rate=0.1, sigma=80)
    assert base[0] <= min(more_dropouts[0], more_corrupt[0], stricter[0])
    assert more_corrupt[1] > base[1]  # more colluders need a higher threshold


def test_small_rounds_fall_back_to_the_complete_graph():
    assert secagg_plus_parameters(5, dropout_rate=0.2, corruption_rate=0.2) == (4, 3)
    assert secagg_plus_parameters(3, dropout_rate=0.0, corruption_rate=0.0) == (2, 2)


def test_infeasible_rates_name_both_rates():
    with pytest.raises(ConfigError, match=r"dropout_rate, corruption_rate.*6 dropouts and 3"):
        secagg_plus_parameters(10, dropout_rate=0.6, corruption_rate=0.3)
    with pytest.raises(ConfigError, match="dropout_rate, corruption_rate"):
        secagg_threshold(10, dropout_rate=0.5, corruption_rate=0.4)
    with pytest.raises(ConfigError, match="dropout_rate"):
        secagg_threshold(10, dropout_rate=1.0, corruption_rate=0.0)


def test_secagg_threshold_leaves_room_for_the_stated_dropouts():
    assert secagg_threshold(10, dropout_rate=0.1, corruption_rate=0.1) == 8
    assert secagg_threshold(100, dropout_rate=0.3, corruption_rate=0.0) == 69
    assert secagg_threshold(3, dropout_rate=0.0, corruption_rate=0.0) == 2


def test_harary_graph_is_regular_symmetric_connected_and_seeded():
    ids = list(range(10, 40))
    graph = harary_graph(ids, 6, seed=1)
    assert set(graph) == set(ids)
    assert all(len(vs) == 6 and u not in vs for u, vs in graph.items())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    reached, frontier = {ids[0]}, [ids[0]]
    while frontier:
        for v in graph[frontier.pop()] - reached:
            reached.add(v)
            frontier.append(v)
    assert reached == set(ids)
    assert harary_graph(ids, 6, seed=1) == graph != harary_graph(ids, 6, seed=2)
    assert harary_graph(ids, 29, seed=1) == complete_graph(ids)
    with pytest.raises(ConfigError, match="even"):
        harary_graph(ids, 5, seed=1)


def test_config_takes_numpy_ids_and_sorts_them():
    config = SecAggConfig(3, threshold=2, client_ids=np.array([9, 4, 6]))
    assert config.client_ids == (4, 6, 9)
    assert all(type(u) is int for u in config.client_ids)


def test_secagg_config_builds_the_variants():
    ids = list(range(200))
    plus = secagg_config(
        ids, variant="secagg+", dropout_rate=0.1, corruption_rate=0.1, ring_bits=32, seed=0
    )
    k, t = secagg_plus_parameters(200, dropout_rate=0.1, corruption_rate=0.1)
    assert plus.threshold == t
    assert {len(v) for v in plus.neighbours.values()} == {k}
    assert plus.dtype.itemsize == 4
    assert plus.num_clients == 200
    plain = secagg_config(
        ids, variant="secagg", dropout_rate=0.1, corruption_rate=0.1, ring_bits=64, seed=0
    )
    assert plain.neighbours is None
    assert plain.threshold == 179
    assert plain.neighbours_of(5) == frozenset(ids) - {5}
    with pytest.raises(ConfigError, match="variant"):
        secagg_config(
            ids, variant="lightsecagg", dropout_rate=0, corruption_rate=0, ring_bits=64, seed=0
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 1, "threshold": 1}, "num_clients"),
        ({"num_clients": 4, "threshold": 4}, r"threshold = 4 .* \[1, 3\]"),
        ({"num_clients": 4, "threshold": 2, "ring_bits": 65}, "ring_bits"),
        ({"num_clients": 4, "threshold": 2, "ring_bits": 0}, "ring_bits"),
        ({"num_clients": 2, "threshold": 1, "client_ids": (3, 3)}, "distinct"),
        ({"num_clients": 2, "threshold": 1, "client_ids": (1, 2**32)}, r"2\^32"),
        ({"num_clients": 2, "threshold": 1, "client_ids": (1, 2.0)}, "integers"),
        ({"num_clients": 3, "threshold": 1, "neighbours": {0: {1}, 1: {2}, 2: {0}}}, "symmetric"),
        ({"num_clients": 3, "threshold": 2, "neighbours": {0: {1}, 1: {0, 2}, 2: {1}}}, "fewest"),
    ],
)
def test_config_is_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SecAggConfig(**kwargs)
