"""Tests of the client partitioners: coverage, determinism, shape of the skew, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privfl.data.partition import DIRICHLET_MAX_TRIES, dirichlet, iid, shards
from privfl.errors import ConfigError, DataError


def random_labels(n: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, n)


def assert_exact_cover(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    """Every index 0..n-1 is in exactly one part; parts are sorted int64 arrays."""
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def label_runs(part: np.ndarray, labels: np.ndarray) -> int:
    """How many runs of consecutive classes (in sorted class order) a client holds."""
    ranks = np.searchsorted(np.unique(labels), np.unique(labels[part]))
    return 1 + int(np.count_nonzero(np.diff(ranks) > 1))


def label_skew(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between clients' label mix and the global mix."""
    num_classes = int(labels.max()) + 1
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = [
        0.5 * np.abs(np.bincount(labels[p], minlength=num_classes) / len(p) - overall).sum()
        for p in parts
    ]
    return float(np.mean(distances))


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


COVER_CASES = [(1, 1), (7, 3), (100, 10), (101, 7), (1001, 13), (50, 50)]


@pytest.mark.parametrize(("n", "k"), COVER_CASES)
def test_iid_exact_cover_and_balanced(n: int, k: int) -> None:
    parts = iid(n, k, seed=3)
    assert_exact_cover(parts, n, k)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(
    ("n", "k", "spc"), [(n, k, spc) for n, k in COVER_CASES for spc in (1, 2) if k * spc <= n]
)
def test_shards_exact_cover(n: int, k: int, spc: int) -> None:
    parts = shards(random_labels(n), k, shards_per_client=spc, seed=3)
    assert_exact_cover(parts, n, k)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= spc * (n // (k * spc))
    assert max(sizes) <= spc * math.ceil(n / (k * spc))


@pytest.mark.parametrize(("n", "k"), [(n, k) for n, k in COVER_CASES if k < n])
@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_exact_cover(n: int, k: int, alpha: float) -> None:
    labels = random_labels(n, num_classes=3)
    parts = dirichlet(labels, k, alpha=alpha, seed=3, min_examples=1)
    assert_exact_cover(parts, n, k)
    assert min(len(p) for p in parts) >= 1


def test_dirichlet_honours_min_examples() -> None:
    parts = dirichlet(random_labels(500), 10, alpha=0.3, seed=1, min_examples=20)
    assert min(len(p) for p in parts) >= 20


def test_deterministic_per_seed() -> None:
    labels = random_labels(600)
    calls = [
        lambda seed: iid(600, 7, seed=seed),
        lambda seed: shards(labels, 7, shards_per_client=3, seed=seed),
        lambda seed: dirichlet(labels, 7, alpha=0.5, seed=seed),
    ]
    for call in calls:
        assert same(call(11), call(11))
        assert not same(call(11), call(12))


def test_shards_give_each_client_few_label_runs() -> None:
    # Each shard is a contiguous slice of the label-sorted data, so the classes in it
    # form one run of consecutive classes; a client with s shards holds at most s runs.
    labels = random_labels(997, num_classes=10, seed=5)
    for k, spc in [(10, 2), (25, 2), (12, 3), (40, 1)]:
        parts = shards(labels, k, shards_per_client=spc, seed=k)
        assert max(label_runs(p, labels) for p in parts) <= spc


def test_label_runs_counts_gaps_between_classes() -> None:
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 2, 4])
    assert label_runs(np.array([3, 4, 5]), labels) == 1
    assert label_runs(np.array([0, 2, 4, 7]), labels) == 3
    assert label_runs(np.array([0, 1, 5]), labels) == 2


def test_shards_are_label_pure_when_classes_divide_evenly() -> None:
    # 10 classes of 60 examples, 40 shards of 15: every shard holds a single class.
    labels = np.repeat(np.arange(10), 60)
    parts = shards(labels, 20, shards_per_client=2, seed=0)
    for part in parts:
        counts = np.bincount(labels[part], minlength=10)
        assert np.count_nonzero(counts) <= 2
        assert np.all(counts % 15 == 0)
        assert counts.sum() == 30


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    labels = random_labels(3000, seed=2)
    skewed = label_skew(dirichlet(labels, 10, alpha=0.1, seed=0), labels)
    near_iid = label_skew(dirichlet(labels, 10, alpha=100.0, seed=0), labels)
    assert skewed > 0.4
    assert near_iid < 0.1
    assert skewed > 5 * near_iid


def test_dirichlet_gives_up_with_clear_error() -> None:
    # Only an exactly even split satisfies min_examples; alpha 0.01 never draws one.
    labels = np.repeat([0, 1], 50)
    with pytest.raises(ConfigError, match=f"no Dirichlet split in {DIRICHLET_MAX_TRIES}") as info:
        dirichlet(labels, 10, alpha=0.01, seed=0, min_examples=10)
    assert info.value.key == "alpha"


LABELS = random_labels(20)
CONFIG_ERRORS = [
    ("clients", lambda: iid(20, 0, seed=0)),
    ("clients", lambda: iid(20, 21, seed=0)),
    ("clients", lambda: iid(0, 1, seed=0)),
    ("clients", lambda: shards(LABELS, 0, seed=0)),
    ("clients", lambda: shards(LABELS, 21, shards_per_client=1, seed=0)),
    ("clients", lambda: shards(LABELS, 11, shards_per_client=2, seed=0)),
    ("shards_per_client", lambda: shards(LABELS, 2, shards_per_client=0, seed=0)),
    ("clients", lambda: dirichlet(LABELS, 0, alpha=1.0, seed=0)),
    ("clients", lambda: dirichlet(LABELS, 21, alpha=1.0, seed=0)),
    ("clients", lambda: dirichlet(LABELS, 5, alpha=1.0, seed=0, min_examples=5)),
    ("min_examples", lambda: dirichlet(LABELS, 5, alpha=1.0, seed=0, min_examples=-1)),
    ("alpha", lambda: dirichlet(LABELS, 2, alpha=0.0, seed=0)),
    ("alpha", lambda: dirichlet(LABELS, 2, alpha=-1.0, seed=0)),
    ("alpha", lambda: dirichlet(LABELS, 2, alpha=math.nan, seed=0)),
    ("alpha", lambda: dirichlet(LABELS, 2, alpha=math.inf, seed=0)),
]


@pytest.mark.parametrize(("key", "call"), CONFIG_ERRORS)
def test_config_errors_name_the_key(key: str, call) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.key == key
    assert str(info.value).startswith(f"{key} = ")


@pytest.mark.parametrize("labels", [np.zeros((4, 2), dtype=np.int64), np.zeros(4)])
def test_bad_labels_raise_data_error(labels: np.ndarray) -> None:
    with pytest.raises(DataError, match="1-D array of integers"):
        shards(labels, 2, seed=0)
    with pytest.raises(DataError, match="1-D array of integers"):
        dirichlet(labels, 2, alpha=1.0, seed=0)
