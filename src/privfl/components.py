"""Base classes of the components that plugins register by name.

A component is a class with a ``name`` class attribute, registered through one of the
``privfl_register_*`` hooks (see :mod:`privfl.hookspecs`). privfl builds it by calling
the class with keyword options: the component's ``[<name>]`` table of the config file
(flags the class declares in :attr:`Component.flags`, ``--option NAME.KEY=VALUE``, or
``options={name: {...}}`` in the Python API). Unknown options and values of the wrong
type are refused before the constructor runs (:mod:`privfl.options`); constructors
check bounds and raise :class:`privfl.ConfigError` for values that cannot work.

The base classes of privacy components (mechanisms, secure sums, accountants) are in
:mod:`privfl.mechanisms`. Components with state that must survive a resume (server
optimizer moments, privacy accountants) implement :meth:`Component.state_dict` and
:meth:`Component.load_state_dict`; the checkpoint stores it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from privfl.client import ClientData, LocalTraining, Loss
    from privfl.client_data import ClientDataSource
    from privfl.client_runtime import ClientApp
    from privfl.messages import Failure, Message

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A metric maps (logits, targets) to one value per example; privfl averages them."""


class Component(ABC):
    """Common ground of all components: a name, declared options and checkpointable state.

    A component's options are its constructor's keyword parameters (name, type
    annotation, default), documented by ``:param NAME:`` lines in the class
    docstring; :mod:`privfl.options` reads them for the configuration, the command
    line and the docs.
    """

    name: ClassVar[str]
    flags: ClassVar[Mapping[str, str]] = {}
    """Option name -> command-line flag (``{"clip": "--dp-clip"}``), for options worth
    a flag of their own; every option can also be set with ``--option NAME.KEY=VALUE``
    or in the component's ``[NAME]`` table."""

    def state_dict(self) -> dict[str, Any]:
        """Return the state to checkpoint: tensors and JSON-serialisable values."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


@dataclass(frozen=True)
class Sampling:
    """How a sampler chooses each round's clients, in the terms privacy accounting needs.

    ``kind`` is ``"poisson"`` (each of ``population`` clients joins independently with
    probability ``rate``), ``"fixed"`` (a uniformly random cohort of exactly ``size``
    distinct clients out of ``population``) or ``"all"`` (every client every round).
    """

    kind: Literal["poisson", "fixed", "all"]
    population: int
    rate: float | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "poisson" and not (self.rate is not None and 0 < self.rate <= 1):
            raise ValueError(f"Poisson sampling needs a rate in (0, 1], got {self.rate}")
        if self.kind == "fixed" and not (
            self.size is not None and 1 <= self.size <= self.population
        ):
            raise ValueError(
                f"fixed-size sampling needs 1 <= size <= population, got {self.size} "
                f"of {self.population}"
            )
        if self.kind not in ("poisson", "fixed", "all"):
            raise ValueError(f"unknown sampling kind {self.kind!r}")


class ClientSampler(Component):
    """Chooses the clients of each round."""

    def sampling(self, num_clients: int) -> Sampling | None:
        """Describe how clients are drawn, for privacy accounting; None if it cannot be said.

        Client-level differential privacy refuses samplers that return None, since
        the privacy of a round depends on how its clients were chosen.
        """
        return None

    @abstractmethod
    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        """Return the sorted int64 ids of the round's clients, drawn with ``generator``."""

    def stragglers(
        self, client_ids: torch.Tensor, *, num_clients: int, seed: int, round: int
    ) -> torch.Tensor:
        """Return the ids among ``client_ids`` that miss the round's deadline (simulated).

        The server half sends these clients no task and counts them as dropped (the
        record lists them under ``stragglers``). Default: no deadline, no stragglers.
        """
        return client_ids[:0]

    @abstractmethod
    def expected_clients(self, num_clients: int) -> float:
        """Return the expected number of clients per round out of ``num_clients``.

        Raises :class:`privfl.ConfigError` when the sampler cannot work with that many
        clients (for example more clients per round than clients).
        """


class Aggregator(Component):
    """Combines a round's updates into one."""

    works_on_secure_sum: bool = False
    """True when the rule is a weighted mean, ``sum_k w_k * update_k / sum_k w_k``, so
    privfl can compute it from sums alone: behind secure aggregation, or with
    client-level DP's fixed denominator. Rules that look at individual updates
    (trimmed mean, median, Krum) say False; an instance may say False when its options
    need every update (FedAvg with a ``norm_bound``)."""

    weighting: ClassVar[Literal["examples", "unit"]] = "examples"
    """A client's weight ``w_k`` in a sum: its example count (``"examples"``, as FedAvg
    weights) or one vote each (``"unit"``). It is data, not a method, because behind
    secure aggregation each client weights its own contribution."""

    def minimum_updates(self) -> int:
        """The fewest updates the rule can combine (default 1).

        A round with fewer accepted updates is skipped (recorded ``aborted``, the global
        model unchanged); a fixed cohort smaller than this is refused before any round.
        """
        return 1

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


class Attack(Component):
    """What simulated malicious clients do instead of honest work.

    A seeded fraction of the clients is malicious for the whole run. Data poisoning
    (:meth:`poison_targets`) and crafted updates (:meth:`craft_update`) run where the
    client trains; update poisoning
    (:meth:`poison_updates`) runs when the round's updates are in, so that attacks
    from colluding clients that know the benign updates (such as "A Little Is
    Enough") can be simulated.
    """

    needs_labels: ClassVar[bool] = False
    """True for attacks on class labels, which a regression task refuses."""

    def poison_targets(self, targets: torch.Tensor, *, num_classes: int) -> torch.Tensor:
        """Return the labels a malicious client trains on; default: unchanged."""
        return targets

    def craft_update(self, update: torch.Tensor, *, client_id: int) -> torch.Tensor:
        """Return the update a malicious client hands to the privacy mechanisms' client
        steps, where it runs, instead of the ``update`` it trained; default: unchanged.

        Unlike :meth:`poison_updates` it runs before clipping and noise, and knows only
        the client's own update (canary clients of a privacy audit send a fixed
        direction this way, see :mod:`privfl.audit.canaries`).
        """
        return update

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
    """Where clients run: the transport between the server half and the client halves.

    The one seam where "where clients run" varies. :meth:`start` gets the client
    half's definition (each client built from it owns its data); then every round
    the server half calls :meth:`send_and_receive` with one message per client and
    gets each client's reply, or a :class:`~privfl.messages.Failure` for a client that
    dropped, timed out or could not be reached. Replies are the client halves' own
    answers: an executor must not change them, and for the same seed every executor
    returns the same replies where the arithmetic is the same.
    """

    clients_in_process: ClassVar[bool] = False
    """True when the client halves run in this process, so that state they keep between
    rounds (error feedback's residuals) is checkpointed with the server's."""

    on_reply: Callable[[int], None] | None = None
    """Set by the server half for the length of a round's training exchange: an
    executor that can calls it with each client's id as that client's reply arrives,
    so a long round shows its progress. Executors that never call it still work."""

    @abstractmethod
    def start(self, app: ClientApp) -> None:
        """Make the client halves of ``app`` reachable (build them lazily, start workers)."""

    @abstractmethod
    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        """Deliver ``messages`` (client id -> message) and return client id -> reply."""

    def close(self) -> None:
        """Release what :meth:`start` acquired (workers, connections); default: nothing."""


class ClientTrainer(Protocol):
    """One process's local training, built by a :class:`Trainer` for its client halves."""

    def train(
        self,
        data: ClientData,
        global_params: torch.Tensor,
        *,
        seed: int,
        round: int,
        statistics: dict[str, float],
    ) -> tuple[torch.Tensor, float]:
        """Train from ``global_params`` on one client's ``data``; return ``(local -
        global, mean loss)``. Scalars the client reports (such as its own epsilon) go
        into ``statistics``, which travel with the reply like the mechanisms'."""


class Trainer(Component):
    """How the client halves train on their own data, instead of privfl's plain SGD
    (:class:`~privfl.client.LocalTrainer`), for example with record-level differential
    privacy. Clients of such a trainer train one at a time, and simulated label
    attacks do not apply to them."""

    @abstractmethod
    def build(self, model: torch.nn.Module, loss: Loss, training: LocalTraining) -> ClientTrainer:
        """Return the trainer of one process (an executor's host, a worker) for clients
        of ``model``'s architecture; ``training`` holds the epochs, batch size and step
        size the run was given."""


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
    """A dataset source's result: training and test splits, and where they came from.

    A dataset whose rows belong to owners (such as a folder of CSV files, one per
    owner) gives ``client_data`` instead of ``train``: each owner is one client and
    loads only its own rows, so no partitioner splits them.
    """

    train: TensorPair | None
    test: TensorPair
    source: str
    client_data: ClientDataSource | None = None

    def __post_init__(self) -> None:
        if (self.train is None) == (self.client_data is None):
            raise ValueError("a dataset gives either train (to partition) or client_data")


class DatasetSource(Component):
    """Loads a named dataset for the command line."""

    defaults: ClassVar[Mapping[str, str]] = {"model": "cnn", "sampler": "uniform"}
    """The components (``model``, ``sampler``) a run on this dataset uses unless its
    configuration names them."""

    @abstractmethod
    def load(self) -> Datasets:
        """Load and return the training and test splits."""


class Partitioner(Component):
    """Splits a dataset's examples among clients."""

    @abstractmethod
    def split(self, targets: torch.Tensor, num_clients: int, *, seed: int) -> list[np.ndarray]:
        """Return one sorted int64 index array per client, covering every example once."""
