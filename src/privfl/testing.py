"""Helpers for testing plugins: a plugin manager with your plugin, a tiny federation.

Plugin authors build a federation that trains in milliseconds on data made in memory
and run a few rounds with their plugin registered::

    from privfl.testing import tiny_federation

    def test_my_aggregator_is_used():
        fed = tiny_federation(plugins=[my_plugin], aggregator="my-aggregator")
        records = fed.run(2)
        assert records[-1].metrics["accuracy"] > 0.5

Nothing here imports pytest, so the helpers work in any test runner.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from privfl.client import LocalTraining
from privfl.components import TensorPair
from privfl.data.partition import iid
from privfl.federation import Federation
from privfl.mechanisms import Exchange, PrivacyMechanism, SecureSum, SecureSumClient
from privfl.plugins import PluginManager, get_plugin_manager


def make_plugin_manager(plugins: Sequence[object] = (), *, autoload: bool = False) -> PluginManager:
    """Return a plugin manager with the built-ins and ``plugins`` (no entry points by default)."""
    return get_plugin_manager(autoload=autoload, plugins=tuple(plugins))


def tiny_dataset(
    num_examples: int = 200, num_features: int = 8, *, seed: int = 0
) -> tuple[TensorPair, TensorPair]:
    """Return (train, test) splits of a two-class problem a linear model learns quickly.

    The label is whether the sum of a fixed random projection of the features is
    positive, so accuracy near 1.0 is reachable and near 0.5 means nothing was learned.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2 * num_examples, num_features, generator=generator)
    direction = torch.randn(num_features, generator=generator)
    targets = (inputs @ direction > 0).long()
    return (
        TensorPair(inputs[:num_examples], targets[:num_examples]),
        TensorPair(inputs[num_examples:], targets[num_examples:]),
    )


def tiny_federation(
    *,
    plugins: Sequence[object] = (),
    num_clients: int = 4,
    seed: int = 0,
    **overrides: Any,
) -> Federation:
    """Return a federation of ``num_clients`` clients on :func:`tiny_dataset`.

    The model is a linear layer with two outputs; every round all clients train for
    one epoch in batches of 10. ``overrides`` are passed to :class:`Federation` and
    replace these defaults (for example ``aggregator="my-aggregator"``).
    """
    train, test = tiny_dataset(seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Linear(train.inputs.shape[1], 2)
    settings: dict[str, Any] = {
        "model": model,
        "train": train,
        "test": test,
        "partition": iid(len(train), num_clients, seed=seed),
        "training": LocalTraining(epochs=1, batch_size=10, lr=0.1),
        "sampler": "all",
        "seed": seed,
        "plugins": make_plugin_manager(plugins),
    }
    settings.update(overrides)
    return Federation(**settings)


class _ClearSumClient(SecureSumClient):
    first_phase = "contribution"

    def start(self, contribution: torch.Tensor) -> bytes:
        return contribution.double().numpy().astype("<f8").tobytes()

    def step(self, phase: str, data: bytes) -> bytes:
        raise RuntimeError(f"a clear sum has one message; got phase {phase!r}")

    @property
    def finished(self) -> bool:
        return True


class ClearSum(PrivacyMechanism):
    """A stand-in for secure aggregation that sums in the clear, for tests.

    It follows the secure-sum contract with a one-message protocol: each client's
    first message is its contribution (float64 bytes), and the server sums those of
    the clients in ``keep`` (default: all that answered), so tests can check the
    round's arithmetic around a secure sum without its cryptography.
    """

    name = "clear-sum"
    sums_securely = True

    def __init__(self, keep: Collection[int] | None = None) -> None:
        self.keep = None if keep is None else set(keep)

    def secure_client(self, *, client_id: int, config: Mapping[str, Any]) -> SecureSumClient:
        return _ClearSumClient()

    def secure_sum(
        self,
        *,
        round: int,
        client_ids: Sequence[int],
        first: Mapping[int, bytes],
        exchange: Exchange,
    ) -> SecureSum:
        kept = sorted(c for c in first if self.keep is None or c in self.keep)
        rows = np.stack([np.frombuffer(first[c], dtype="<f8") for c in kept])
        return SecureSum(torch.from_numpy(rows.sum(axis=0)).float(), kept)
