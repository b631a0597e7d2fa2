"""Seeded ways to split a dataset among federated clients.

Each partitioner returns one ``int64`` array of example indices per client, sorted
ascending; together they hold every index ``0..n-1`` exactly once, so no example is
lost or duplicated. The same arguments and seed always give the same split.

- :func:`iid`: a uniformly random split into near-equal parts, the easy baseline.
- :func:`shards`: the pathological non-IID split of McMahan et al., "Communication-
  Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017: sort by
  label, cut into equal shards and give each client a few shards, so each client sees
  only a few classes.
- :func:`dirichlet`: the label-skew split of Hsu et al., "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification", 2019: each
  class is shared among clients in proportions drawn from Dirichlet(alpha); small
  alpha gives strongly skewed clients, large alpha nearly IID ones.

Impossible settings raise :class:`~privfl.errors.ConfigError` named after the config
key (``clients``, ``shards_per_client``, ``alpha``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from privfl.errors import ConfigError, DataError

__all__ = ["dirichlet", "iid", "shards"]

#: How many Dirichlet draws :func:`dirichlet` tries before it gives up.
DIRICHLET_MAX_TRIES = 100


def iid(num_examples: int, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Split ``range(num_examples)`` uniformly at random into ``num_clients`` parts.

    Part sizes differ by at most one.
    """
    _check_clients(num_clients, num_examples)
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_examples).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def shards(
    labels: ArrayLike, num_clients: int, *, shards_per_client: int = 2, seed: int
) -> list[np.ndarray]:
    """Give each client ``shards_per_client`` random shards of the label-sorted data.

    Examples are sorted by label (ties in a seeded random order) and cut into
    ``num_clients * shards_per_client`` contiguous shards whose sizes differ by at most
    one, so every example lands in a shard. Each client gets ``shards_per_client``
    shards drawn at random without replacement.
    """
    y = _labels(labels)
    if shards_per_client < 1:
        raise ConfigError("shards_per_client", shards_per_client, "an integer of at least 1")
    _check_clients(num_clients, len(y))
    num_shards = num_clients * shards_per_client
    if num_shards > len(y):
        raise ConfigError(
            "clients",
            num_clients,
            f"clients * shards_per_client ({num_shards}) must not exceed the {len(y)} examples",
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(y))
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")].astype(np.int64)
    pieces = np.array_split(by_label, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in owners]


def dirichlet(
    labels: ArrayLike, num_clients: int, *, alpha: float, seed: int, min_examples: int = 1
) -> list[np.ndarray]:
    """Share each class among clients in proportions drawn from Dirichlet(``alpha``).

    For every class a fresh proportion vector over the clients is drawn and the
    (shuffled) examples of that class are cut accordingly. The whole draw is repeated,
    up to :data:`DIRICHLET_MAX_TRIES` times, until every client holds at least
    ``min_examples`` examples.
    """
    y = _labels(labels)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError("alpha", alpha, "a finite number greater than 0")
    if min_examples < 0:
        raise ConfigError("min_examples", min_examples, "an integer of at least 0")
    _check_clients(num_clients, len(y))
    if num_clients * min_examples > len(y):
        raise ConfigError(
            "clients",
            num_clients,
            f"clients * min_examples ({num_clients} * {min_examples}) must not exceed the "
            f"{len(y)} examples",
        )
    rng = np.random.default_rng(seed)
    classes = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    owner = np.empty(len(y), dtype=np.int64)
    for _ in range(DIRICHLET_MAX_TRIES):
        for members in classes:
            share = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.floor(np.cumsum(share[:-1]) * len(members)).astype(np.int64)
            counts = np.diff(np.concatenate(([0], np.clip(cuts, 0, len(members)), [len(members)])))
            owner[members] = np.repeat(np.arange(num_clients), counts)
        sizes = np.bincount(owner, minlength=num_clients)
        if sizes.min() >= min_examples:
            order = np.argsort(owner, kind="stable").astype(np.int64)
            return np.split(order, np.cumsum(sizes)[:-1])
    raise ConfigError(
        "alpha",
        alpha,
        f"no Dirichlet split in {DIRICHLET_MAX_TRIES} tries gave each of the {num_clients} "
        f"clients at least {min_examples} examples; raise alpha or lower clients",
    )


def _check_clients(num_clients: int, num_examples: int) -> None:
    """Raise ConfigError("clients") unless 1 <= num_clients <= num_examples."""
    if num_clients < 1 or num_clients > num_examples:
        raise ConfigError(
            "clients", num_clients, f"at least 1 and at most the {num_examples} examples"
        )


def _labels(labels: ArrayLike) -> np.ndarray:
    """Return ``labels`` as a 1-D integer numpy array, or raise DataError."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D array of integers, got {y.dtype} of shape {list(y.shape)}; "
            "pass one class label per example"
        )
    return y
