"""Tests of the client partitioners: coverage, determinism, shape of the skew, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from privfl.builtin.partitioners import DirichletPartitioner, IIDPartitioner
from privfl.data.partition import dirichlet, iid, shards, skewed_sizes
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
        lambda seed: dirichlet(labels, 300, alpha=0.1, seed=seed),  # tops up
        lambda seed: iid(600, 7, seed=seed, quantity_skew=1.0),
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


def test_dirichlet_tops_up_instead_of_redrawing() -> None:
    # Only an exactly even split satisfies min_examples; alpha 0.01 leaves most of the
    # 10 clients short, and the top-up fills each to exactly 10 from the others' spares.
    labels = np.repeat([0, 1], 50)
    parts = dirichlet(labels, 10, alpha=0.01, seed=0, min_examples=10)
    assert_exact_cover(parts, 100, 10)
    assert [len(p) for p in parts] == [10] * 10


def test_dirichlet_leaves_a_split_that_needs_no_top_up_as_drawn() -> None:
    # min_examples 0 never tops up, so the draw itself is visible: a split whose draw
    # already satisfies min_examples is the same with and without the requirement.
    labels = random_labels(3000, seed=4)
    drawn = dirichlet(labels, 10, alpha=1.0, seed=5, min_examples=0)
    assert min(len(p) for p in drawn) >= 1
    assert same(drawn, dirichlet(labels, 10, alpha=1.0, seed=5, min_examples=1))


def test_dirichlet_top_up_moves_only_what_is_lacking() -> None:
    labels = random_labels(2000, seed=6)
    drawn = dirichlet(labels, 400, alpha=0.1, seed=7, min_examples=0)
    lacking = sum(max(0, 2 - len(p)) for p in drawn)
    assert lacking > 50  # the draw leaves many clients short
    topped = dirichlet(labels, 400, alpha=0.1, seed=7, min_examples=2)
    moved = owners(drawn, 2000) != owners(topped, 2000)
    assert np.count_nonzero(moved) == lacking
    for before, after in zip(drawn, topped, strict=True):
        if len(before) < 2:  # short clients only gain, and just enough
            assert set(before) <= set(after)
            assert len(after) == 2
        else:  # donors only give, and keep at least 2
            assert set(after) <= set(before)
            assert len(after) >= 2


def owners(parts: list[np.ndarray], n: int) -> np.ndarray:
    owner = np.full(n, -1)
    for client, part in enumerate(parts):
        owner[part] = client
    return owner


MNIST_LIKE = random_labels(22_699, seed=8)  # the size of the bundled real MNIST prefix


@pytest.mark.parametrize("alpha", [0.1, 0.5, 10.0])
def test_dirichlet_splits_ten_thousand_clients(alpha: float) -> None:
    parts = dirichlet(MNIST_LIKE, 10_000, alpha=alpha, seed=0)
    assert_exact_cover(parts, len(MNIST_LIKE), 10_000)
    assert min(len(p) for p in parts) >= 1


def test_iid_and_shards_split_ten_thousand_clients() -> None:
    n = len(MNIST_LIKE)
    parts = iid(n, 10_000, seed=0)
    assert_exact_cover(parts, n, 10_000)
    assert {len(p) for p in parts} == {2, 3}
    parts = shards(MNIST_LIKE, 10_000, shards_per_client=2, seed=0)
    assert_exact_cover(parts, n, 10_000)
    present = np.zeros((10_000, 10), dtype=bool)  # label_runs for every client at once
    present[owners(parts, n), MNIST_LIKE] = True
    runs = present[:, 0].astype(int) + np.count_nonzero(present[:, 1:] & ~present[:, :-1], axis=1)
    assert runs.max() <= 2


def mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean over clients of the entropy (nats) of the client's label mix."""
    counts = np.stack([np.bincount(labels[p], minlength=10) for p in parts]).astype(float)
    mix = counts / counts.sum(axis=1, keepdims=True)
    terms = np.where(mix > 0, -mix * np.log(np.where(mix > 0, mix, 1.0)), 0.0)
    return float(terms.sum(axis=1).mean())


def test_dirichlet_skew_survives_ten_thousand_clients() -> None:
    # 2.3 examples per client cap every entropy; measured on this data: 0.29 nats at
    # alpha 0.1, 0.62 at 0.5, 0.68 at 10, 0.72 for the IID split.
    entropy = {
        alpha: mean_label_entropy(dirichlet(MNIST_LIKE, 10_000, alpha=alpha, seed=1), MNIST_LIKE)
        for alpha in (0.1, 10.0)
    }
    assert entropy[0.1] < 0.6 * entropy[10.0]


def test_dirichlet_small_alpha_lowers_label_entropy() -> None:
    labels = random_labels(3000, seed=2)
    skewed = mean_label_entropy(dirichlet(labels, 30, alpha=0.1, seed=0), labels)
    near_iid = mean_label_entropy(dirichlet(labels, 30, alpha=10.0, seed=0), labels)
    assert near_iid > 0.9 * math.log(10)
    assert skewed < 0.5 * near_iid


def test_iid_quantity_skew_zero_is_the_equal_split() -> None:
    assert same(iid(1001, 13, seed=4, quantity_skew=0.0), iid(1001, 13, seed=4))


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_iid_quantity_skew_covers_and_keeps_one_example(sigma: float) -> None:
    parts = iid(22_699, 10_000, seed=2, quantity_skew=sigma)
    assert_exact_cover(parts, 22_699, 10_000)
    assert min(len(p) for p in parts) >= 1


def test_iid_quantity_skew_sizes_vary_more_with_sigma() -> None:
    spread = {}
    for sigma in (0.0, 0.3, 1.0):
        sizes = np.array([len(p) for p in iid(60_000, 100, seed=3, quantity_skew=sigma)])
        spread[sigma] = sizes.std() / sizes.mean()
    assert spread[0.0] < 0.01
    assert 0.2 < spread[0.3] < 0.45  # log-normal: sqrt(exp(sigma^2) - 1) = 0.31
    assert spread[1.0] > 2 * spread[0.3]


def test_skewed_sizes_are_exact_and_seeded() -> None:
    def draw(seed: int) -> np.ndarray:
        return skewed_sizes(1000, 37, sigma=1.5, rng=np.random.default_rng(seed), min_examples=3)

    sizes = draw(0)
    assert sizes.sum() == 1000
    assert sizes.min() >= 3
    assert np.array_equal(sizes, draw(0))
    assert not np.array_equal(sizes, draw(1))


def test_partitioners_pass_their_options() -> None:
    targets = torch.from_numpy(random_labels(5000, seed=9))
    skewed = IIDPartitioner(quantity_skew=1.0).split(targets, 50, seed=0)
    assert same(skewed, iid(5000, 50, seed=0, quantity_skew=1.0))
    assert len({len(p) for p in skewed}) > 10
    labelled = DirichletPartitioner(alpha=0.2).split(targets, 50, seed=0)
    assert same(labelled, dirichlet(targets.numpy(), 50, alpha=0.2, seed=0))


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
    ("quantity_skew", lambda: iid(20, 2, seed=0, quantity_skew=-0.1)),
    ("quantity_skew", lambda: iid(20, 2, seed=0, quantity_skew=math.nan)),
    ("quantity_skew", lambda: IIDPartitioner(quantity_skew=-1.0)),
    ("quantity_skew", lambda: IIDPartitioner(quantity_skew=math.inf)),
    (
        "clients",
        lambda: skewed_sizes(20, 5, sigma=1.0, rng=np.random.default_rng(0), min_examples=5),
    ),
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
