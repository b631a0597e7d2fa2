"""Canary clients for a privacy audit: who they are, what they send, what they leave.

A :class:`CanaryAudit` draws ``m`` canaries, each a random unit direction (from the
audit's seed and the canary's number) and each *included* independently with
probability 1/2 (Steinke et al. 2023). Every canary joins the population as an extra
simulated client (one example, which it never uses), and the sampler draws it like any
other client. When drawn, an included canary sends its direction scaled to the clip
norm instead of its trained update, and an excluded one sends zeros, which leave the
sum as if it were absent (:class:`Canaries`, an attack whose
:meth:`~privfl.Attack.craft_update` runs where the client runs, before the DP client
step, so clipping and client-side noise apply as to every client). So the population,
and the expected cohort that divides DP's sum, do not depend on which canaries were
included: the two worlds of each canary differ only by its contribution, as the DP
guarantee assumes. Excluded canaries' directions are the null of "unseen" canaries
(Andrew et al. 2024).

While the audit federation runs, :class:`CanaryAudit` records each round's model delta
(a ``privfl_round_finish`` hook); afterwards :meth:`CanaryAudit.scores` gives each
canary's cosine with the final model delta and its largest cosine with any round's
delta. The audit federation is a separate run: canaries never reach a model a user
keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from privfl.client_data import ClientDataSource, PartitionedData
from privfl.components import Attack
from privfl.errors import ConfigError
from privfl.federation import Federation
from privfl.plugins import hookimpl
from privfl.seeding import torch_generator

DIRECTION_BLOCK = 64
"""Canary directions drawn and scored at a time (64 x 199,210 float32 is 51 MB)."""


def canary_directions(seed: int, numbers: Sequence[int], dim: int) -> torch.Tensor:
    """Return the unit directions of canaries ``numbers``, ``[len(numbers), dim]`` float32.

    Canary ``j``'s direction is a standard normal vector from a generator seeded by
    ``(seed, "canary", j)``, divided by its norm: uniform on the sphere, and the same
    bytes wherever it is drawn.
    """
    rows = torch.empty(len(numbers), dim)
    for row, number in zip(rows, numbers, strict=True):
        row.normal_(generator=torch_generator(seed, "canary", int(number)))
    return rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)


class Canaries(Attack):
    """Canary clients: an included one sends its fixed direction scaled to ``norm``, an
    excluded one zeros; never their training.

    Built by :class:`CanaryAudit`, not by name: the audit federation's malicious
    clients are exactly its canary clients.

    :param clients: Client id -> canary number, for every canary.
    :param included: Canary numbers of the included canaries.
    :param norm: The L2 norm of every included canary's update (the clip norm).
    :param seed: The audit's seed, which fixes the directions.
    """

    name = "canaries"

    def __init__(
        self, clients: dict[int, int], included: frozenset[int], norm: float, seed: int
    ) -> None:
        self.clients = dict(clients)
        self.included = frozenset(included)
        self.norm = float(norm)
        self.seed = seed

    def craft_update(self, update: torch.Tensor, *, client_id: int) -> torch.Tensor:
        """Return the canary's direction at ``norm`` (zeros if excluded), whatever
        ``update`` the client trained."""
        number = self.clients[client_id]
        if number not in self.included:
            return torch.zeros_like(update)
        direction = canary_directions(self.seed, [number], update.numel())[0]
        return (direction * self.norm).to(update.dtype)


@dataclass(frozen=True)
class CanaryScores:
    """Each canary's statistics after the audit run (row ``j`` is canary ``j``).

    :ivar included: Whether canary ``j`` was in the population.
    :ivar final: Cosine of its direction with the final model delta (final model minus
        the starting one).
    :ivar iterates: Its largest cosine with any round's model delta.
    :ivar rounds: How many rounds were recorded.
    :ivar dim: The number of model parameters.
    """

    included: np.ndarray
    final: np.ndarray
    iterates: np.ndarray
    rounds: int
    dim: int


class CanaryAudit:
    """Draws the canaries of one audit run, inserts them and reads their statistics.

    Use it in this order: :meth:`population` (the clients' data with the canaries
    added) to build the audit federation, :meth:`attach` to make the canary
    clients send their directions and to record every round, ``federation.run(...)``,
    then :meth:`scores`.

    :param canaries: ``m``, the number of canaries drawn; about half are included.
    :param seed: Fixes which canaries are included and their directions.
    """

    def __init__(self, canaries: int = 1000, *, seed: int = 0) -> None:
        if not (isinstance(canaries, int) and canaries >= 2):
            raise ConfigError("canaries", canaries, "an integer >= 2")
        self.count = canaries
        self.seed = seed
        coins = torch.rand(canaries, generator=torch_generator(seed, "canary-inclusion"))
        self.included = (coins < 0.5).numpy()
        self.first_client = -1
        """Client id of canary 0 (canary ``j`` is client ``first_client + j``), set by
        :meth:`population`."""
        self._federation: Federation | None = None
        self._start: torch.Tensor | None = None
        self._last: torch.Tensor | None = None
        self._deltas: list[torch.Tensor] = []

    @property
    def included_numbers(self) -> list[int]:
        """The numbers of the included canaries, in increasing order."""
        return np.flatnonzero(self.included).tolist()

    def population(self, source: ClientDataSource) -> PartitionedData:
        """Return ``source`` with one extra simulated client per canary.

        Each canary client holds one example (which it trains on and then discards:
        a reply must report at least one example).
        """
        if not isinstance(source, PartitionedData):
            raise ConfigError(
                "client_data",
                type(source).__name__,
                "simulated clients (train and partition): an audit adds canary clients to "
                "a simulation, not to real data owners",
            )
        self.first_client = source.num_clients
        extra = [
            torch.tensor([number % len(source.train)], dtype=torch.int64)
            for number in range(self.count)
        ]
        return PartitionedData(source.train, [*source.partition, *extra])

    def attach(self, federation: Federation) -> None:
        """Make ``federation``'s canary clients send their directions; record its rounds.

        The canaries' norm is the clip norm of the federation's DP mechanism (the first
        mechanism with a ``clip``); with adaptive clipping it is the starting one, and
        DP's clipping brings the canary to the current clip norm when that is smaller.
        """
        if self.first_client < 0:
            raise ConfigError("canaries", "not in the population", "call population() first")
        clips = [m.clip for m in federation.mechanisms if hasattr(m, "clip")]
        if not clips:
            raise ConfigError(
                "mechanisms",
                [m.name for m in federation.mechanisms],
                "a client-level DP mechanism with a clip norm (dp): the audit checks its epsilon",
            )
        if federation.attack is not None:
            raise ConfigError(
                "attack", federation.attack.name, "no simulated attack in an audit run"
            )
        clients = {self.first_client + number: number for number in range(self.count)}
        # The audit federation is built for the audit alone: its malicious clients are
        # set here, to exactly the canary clients, before its client half is built.
        included = frozenset(self.included_numbers)
        federation.attack = Canaries(clients, included, float(clips[0]), self.seed)
        federation.malicious = frozenset(clients)
        self._federation = federation
        federation.plugins.register(self, name=f"privfl.audit.canaries.{id(self)}")

    @hookimpl
    def privfl_session_start(self, federation: Federation) -> None:
        if federation is self._federation and self._start is None:
            self._start = federation.params.clone()
            self._last = self._start

    @hookimpl
    def privfl_round_finish(self, federation: Federation) -> None:
        if federation is self._federation:
            assert self._last is not None
            self._deltas.append(federation.params - self._last)
            self._last = federation.params.clone()

    def scores(self) -> CanaryScores:
        """Every canary's final-model cosine and largest per-round cosine.

        Directions are drawn again in blocks of :data:`DIRECTION_BLOCK`, so memory
        holds the rounds' deltas and one block, never all directions.
        """
        if self._start is None or self._last is None or not self._deltas:
            raise ConfigError("audit", "no rounds recorded", "run the attached federation first")
        deltas = torch.stack(self._deltas).double()
        deltas = deltas / torch.linalg.vector_norm(deltas, dim=1, keepdim=True).clamp_min(1e-300)
        final = (self._last - self._start).double()
        final = final / torch.linalg.vector_norm(final).clamp_min(1e-300)
        dim = final.numel()
        finals, maxima = [], []
        for start in range(0, self.count, DIRECTION_BLOCK):
            numbers = range(start, min(start + DIRECTION_BLOCK, self.count))
            block = canary_directions(self.seed, numbers, dim).double()
            finals.append(block @ final)
            maxima.append((block @ deltas.T).max(dim=1).values)
        return CanaryScores(
            included=self.included.copy(),
            final=torch.cat(finals).numpy(),
            iterates=torch.cat(maxima).numpy(),
            rounds=len(self._deltas),
            dim=dim,
        )

    def detach(self) -> None:
        """Stop recording (the federation keeps its canaries)."""
        if self._federation is not None and self._federation.plugins.is_registered(self):
            self._federation.plugins.unregister(self)
