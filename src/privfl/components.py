"""Base classes of the components that plugins register by name.

A component is a class with a ``name`` class attribute, registered through one of the
``privfl_register_*`` hooks (see :mod:`privfl.hookspecs`). privfl builds it by calling
the class with keyword options: the config keys the class lists in ``config_keys``,
plus the table ``[options.<name>]`` of the config file (or ``options={name: {...}}``
in the Python API). Constructors check their options and raise
:class:`privfl.ConfigError` for values that cannot work.

Components with state that must survive a resume (server optimizer moments, privacy
accountants) implement :meth:`Component.state_dict` and
:meth:`Component.load_state_dict`; the checkpoint stores it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:
    from privfl.client import ClientWork
    from privfl.records import ClientResult, ClientTask

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A metric maps (logits, targets) to one value per example; privfl averages them."""


class Component(ABC):
    """Common ground of all components: a name, config keys and checkpointable state."""

    name: ClassVar[str]
    config_keys: ClassVar[tuple[str, ...]] = ()
    """Top-level config keys passed to the constructor as keyword options."""

    def state_dict(self) -> dict[str, Any]:
        """Return the state to checkpoint: tensors and JSON-serialisable values."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class ClientSampler(Component):
    """Chooses the clients of each round."""

    @abstractmethod
    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        """Return the sorted int64 ids of the round's clients, drawn with ``generator``."""

    @abstractmethod
    def expected_clients(self, num_clients: int) -> float:
        """Return the expected number of clients per round out of ``num_clients``.

        Raises :class:`privfl.ConfigError` when the sampler cannot work with that many
        clients (for example more clients per round than clients).
        """


class Aggregator(Component):
    """Combines a round's updates into one."""

    works_on_secure_sum: ClassVar[bool] = False
    """True when the rule needs only the (weighted) sum of updates, so it can run
    behind secure aggregation; rules that look at individual updates say False."""

    @abstractmethod
    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Combine ``updates`` (``[n_clients, dim]``) with per-client ``weights`` (``[n]``).

        ``weights`` are the clients' example counts; rules that ignore them may.
        """


class ServerOptimizer(Component):
    """Applies the aggregated update to the global parameters."""

    @abstractmethod
    def step(self, params: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """Return new global parameters from ``params`` and the aggregated ``update``.

        ``update`` points from the global parameters towards the clients' local ones
        (``local - global``), so plain FedAvg is ``params + update``.
        """


class PrivacyMechanism(Component):
    """Transforms updates where the client runs, and the aggregate on the server.

    Client steps run inside :class:`privfl.client.ClientWork`, which can be rebuilt in
    another process from plain data, so they must not reach the server's state.
    """

    def client_step(self, update: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Transform one client's update (clip, noise, encode); default: unchanged."""
        return update

    def server_step(
        self, aggregate: torch.Tensor, *, expected_clients: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Transform the aggregated update (central noise); default: unchanged."""
        return aggregate


class Attack(Component):
    """What simulated malicious clients do instead of honest work.

    A seeded fraction of the clients is malicious for the whole run. Data poisoning
    (:meth:`poison_targets`) runs where the client trains; update poisoning
    (:meth:`poison_updates`) runs when the round's updates are in, so that attacks
    from colluding clients that know the benign updates (such as "A Little Is
    Enough") can be simulated.
    """

    def poison_targets(self, targets: torch.Tensor, *, num_classes: int) -> torch.Tensor:
        """Return the labels a malicious client trains on; default: unchanged."""
        return targets

    def poison_updates(
        self, malicious: torch.Tensor, benign: torch.Tensor, *, generator: torch.Generator
    ) -> torch.Tensor:
        """Return the updates the malicious clients send instead of ``malicious``.

        :param malicious: ``[m, dim]`` updates the malicious clients computed honestly.
        :param benign: ``[b, dim]`` updates of the round's other clients (may be empty).
        :param generator: Randomness for the attack, derived from (seed, round).
        """
        return malicious


class Executor(Component):
    """Runs the local training of a round's clients."""

    @abstractmethod
    def run(
        self, work: ClientWork, tasks: Sequence[ClientTask], global_params: torch.Tensor
    ) -> list[ClientResult]:
        """Run ``work`` for every task and return the results in task order."""


class Evaluator(Component):
    """Scores global parameters on a test set."""

    final_only: ClassVar[bool] = False
    """True for expensive evaluators that run only after the last round of a run."""

    @abstractmethod
    def evaluate(
        self,
        *,
        model: torch.nn.Module,
        test: TensorPair,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        metrics: Mapping[str, Metric],
    ) -> dict[str, float]:
        """Return ``{"loss": ..., <metric>: ...}`` for ``model`` (holding the global weights).

        The model belongs to the federation: evaluators must not change it.
        """


@dataclass(frozen=True)
class TensorPair:
    """Inputs and targets of a dataset split, as two tensors of equal length."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(
                f"inputs and targets differ in length: {len(self.inputs)} != {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Datasets:
    """A dataset source's result: training and test splits, and where they came from."""

    train: TensorPair
    test: TensorPair
    source: str


class DatasetSource(Component):
    """Loads a named dataset for the command line."""

    @abstractmethod
    def load(self) -> Datasets:
        """Load and return the training and test splits."""


class Partitioner(Component):
    """Splits a dataset's examples among clients."""

    @abstractmethod
    def split(self, targets: torch.Tensor, num_clients: int, *, seed: int) -> list[np.ndarray]:
        """Return one sorted int64 index array per client, covering every example once."""
