"""Base classes of the privacy components: mechanisms with two halves, secure sums, accountants.

A :class:`PrivacyMechanism` has a client half, which runs where the client runs on
what its task says, and a server half, which is set up once and transforms the
aggregate; the two meet only in messages (see :mod:`privfl.client_runtime` and the
round protocol). A secure-sum mechanism adds a protocol object on each side
(:class:`SecureSumClient`, :meth:`PrivacyMechanism.secure_sum`). An
:class:`Accountant` tracks the privacy that client-level DP spends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from privfl.components import Attack, Component, Sampling
from privfl.errors import ConfigError

if TYPE_CHECKING:
    from privfl.compressors import Compressor


@dataclass(frozen=True)
class MechanismSetup:
    """What the core tells a privacy mechanism once, before the first round.

    :ivar sampling: How the sampler draws clients, or None if it cannot say.
    :ivar expected_clients: The sampler's expected number of clients per round.
    :ivar num_clients: The number of clients in the federation.
    :ivar dimension: The number of model parameters (the length of an update).
    :ivar seed: The federation's root seed.
    :ivar position: The mechanism's position in the federation's list.
    :ivar secure_aggregation: Whether a secure-sum mechanism is in the federation (so
        the server sees only the sum of the contributions).
    :ivar create: Builds another registered component, ``create(kind, name)``, with
        the options the run gives it (DP builds its accountant this way).
    :ivar mechanisms: The federation's mechanisms, in order (secure aggregation asks
        them for :meth:`PrivacyMechanism.value_bound` to size its ring).
    :ivar unit_weights: Whether clients contribute to sums with weight 1 rather than
        their example count.
    :ivar compressor: The federation's update compressor, or None (secure aggregation
        sums the codes of one whose :attr:`~privfl.Compressor.sums_in_ring` is True).
    """

    sampling: Sampling | None
    expected_clients: float
    num_clients: int
    dimension: int
    seed: int
    position: int
    create: Callable[[str, str], Any]
    secure_aggregation: bool = False
    mechanisms: tuple[PrivacyMechanism, ...] = ()
    unit_weights: bool = False
    compressor: Compressor | None = None


class PrivacyMechanism(Component):
    """A privacy step with a client half and a server half that meet only in messages.

    The **server half** is set up once (:meth:`setup`), says per round what the
    clients need (:meth:`client_config`, sent with each client's task) and transforms
    the aggregate (:meth:`server_step`: central noise, accounting), returning the
    values the round's record gets. The **client half** runs where the client runs, on
    the client's own update, from that config alone (:meth:`client_step`: clip,
    noise). A secure-aggregation mechanism (:attr:`sums_securely`) also has a
    client-side protocol object (:meth:`secure_client`) and a server-side one
    (:meth:`secure_sum`) that exchange the protocol's messages, so that the server
    learns the sum of the contributions and never one of them.
    """

    fixed_denominator: ClassVar[bool] = False
    """True for mechanisms that bound each client's share of the sum (client-level DP):
    clients then contribute with weight 1, and the server divides the sum by the
    expected number of clients instead of the weight received (McMahan et al. 2018).
    Needs an aggregator that works on a sum."""

    sums_securely: ClassVar[bool] = False
    """True for secure aggregation: the server learns the sum of the clients'
    contributions through :meth:`secure_sum`, never a single one. At most one mechanism
    of a federation may say so, and its aggregator must work on a secure sum."""

    sums_codes: ClassVar[bool] = False
    """True for a secure sum that adds the integer codes of a compressor whose codes add
    up (:attr:`privfl.Compressor.sums_in_ring`) instead of the updates: only such a
    mechanism may run with a compressor (:func:`privfl.compressors.check_compression`)."""

    def setup(self, context: MechanismSetup) -> None:
        """Server half: prepare for a run (build an accountant, derive seeds); default: nothing.

        Raise :class:`privfl.ConfigError` when the mechanism cannot work in this
        federation (for example DP with a sampler that cannot state its scheme).
        """

    def client_config(self, *, round: int, client_ids: Sequence[int]) -> dict[str, Any]:
        """Server half: what each client's half needs this round; default: nothing.

        Values must be JSON-safe or tensors; they travel in the ``train`` message.
        """
        return {}

    def client_step(
        self,
        update: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generator: torch.Generator,
        statistics: dict[str, float],
    ) -> torch.Tensor:
        """Client half: transform one client's update (clip, noise); default: unchanged.

        :param config: This round's :meth:`client_config`, as the client received it.
        :param generator: Randomness derived from (seed, round, client, position).
        :param statistics: A mechanism may put scalars here (such as whether the update
            was below the clip norm); privfl sums them with the updates, under secure
            aggregation too, and hands their mean to :meth:`server_step`.
        """
        return update

    def value_bound(self, bound: float | None) -> float | None:
        """Server half: a bound on every value the client half sends this round, or None.

        Given ``bound`` on the magnitude of every coordinate of the update the client
        half receives (None: no bound known), return one on every coordinate of the
        update it returns and every statistic it reports, for the state that this
        round's :meth:`client_config` is made from. Secure aggregation clamps each
        client's values to the bound it composes from these answers and sizes its ring
        by it, so a bound that is too small clamps real values (counted in the record).
        Default: ``bound`` when :meth:`client_step` is not overridden (the update passes
        unchanged), else None.
        """
        return bound if type(self).client_step is PrivacyMechanism.client_step else None

    def secure_client(self, *, client_id: int, config: Mapping[str, Any]) -> SecureSumClient:
        """Client half of a secure sum: the protocol object of one client for one round."""
        raise NotImplementedError(f"{type(self).__name__} does not sum securely")

    def secure_sum(
        self,
        *,
        round: int,
        client_ids: Sequence[int],
        first: Mapping[int, bytes],
        exchange: Exchange,
    ) -> SecureSum:
        """Server half of a secure sum: run the protocol's phases through ``exchange``.

        Called only when :attr:`sums_securely` is True.

        :param client_ids: The clients the round's tasks went to.
        :param first: The first protocol message of each client that answered its task.
        :param exchange: ``exchange(phase, {client: bytes})`` sends each client its
            message of ``phase`` and returns the replies that came back; a client
            missing from them dropped out.
        :raises privfl.RoundAborted: when too few clients remain to finish the round.
        """
        raise NotImplementedError(f"{type(self).__name__} does not sum securely")

    def server_step(
        self,
        aggregate: torch.Tensor,
        *,
        expected_clients: float,
        contributors: int,
        statistics: Mapping[str, float],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Server half: transform the aggregate; return it and values for the round's record.

        :param expected_clients: The sampler's expected clients per round.
        :param contributors: How many clients' contributions are in the aggregate.
        :param statistics: Mean of the clients' statistics (see :meth:`client_step`).
        :returns: The new aggregate and values such as ``epsilon`` for the record.
        """
        return aggregate, {}


Exchange = Callable[[str, Mapping[int, bytes]], dict[int, bytes]]
"""Sends one protocol phase's messages to clients and returns the replies that came."""


class SecureSumClient(ABC):
    """One client's side of a secure sum, kept by the client half between messages."""

    first_phase: ClassVar[str]
    """The phase whose message :meth:`start` returns."""

    @abstractmethod
    def start(self, contribution: torch.Tensor) -> bytes:
        """Take the client's contribution (kept secret) and return its first message."""

    @abstractmethod
    def step(self, phase: str, data: bytes) -> bytes | bytearray | memoryview:
        """Answer the server's message of ``phase`` (a ``bytearray`` or writable
        ``memoryview`` is sent as is, not copied: the client hands it over)."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """True once the client has sent its last message of the round."""


@dataclass(frozen=True)
class SecureSum:
    """The result of a secure summation: the sum, whose contributions it holds, and
    values for the round's record (protocol cost, dropouts)."""

    total: torch.Tensor
    contributors: list[int]
    values: dict[str, Any] = field(default_factory=dict)


class Accountant(Component):
    """Tracks the privacy spent by a sequence of subsampled Gaussian rounds.

    ``neighbouring`` states the neighbouring relation the guarantee is for (adding or
    removing one client's data, or replacing it), since it differs between sampling
    schemes. The state (the rounds composed so far) is checkpointed, so a resumed run
    reports the same epsilon.
    """

    @property
    def neighbouring(self) -> str:
        """The neighbouring relation of the guarantee, in words."""
        return "add or remove one client"

    @property
    def method(self) -> str:
        """How epsilon is computed, for the round records: by default the accountant's
        name; one that picks a method (``auto``) names it and why."""
        return self.name

    @abstractmethod
    def compose(self, *, sampling: Sampling, noise_multiplier: float, rounds: int = 1) -> None:
        """Account ``rounds`` more rounds of the Gaussian mechanism with ``noise_multiplier``.

        Raises :class:`privfl.ConfigError` for a sampling scheme it cannot account.
        """

    @abstractmethod
    def epsilon(self, delta: float) -> float:
        """Return epsilon at ``delta`` for the rounds composed so far (0 before any)."""

    @abstractmethod
    def epsilon_after(
        self, *, sampling: Sampling, noise_multiplier: float, rounds: int, delta: float
    ) -> float:
        """Return epsilon at ``delta`` if ``rounds`` more rounds were composed (no change)."""


def check_combination(
    mechanisms: Sequence[PrivacyMechanism],
    aggregator: Any,
    attack: Any,
    sampling: Sampling | None = None,
) -> int | None:
    """Check the combination of mechanisms, aggregator, attack and sampling, in one
    place, before any round; return the position of the secure-sum mechanism, if any.

    :raises ConfigError: for two secure-sum mechanisms; a secure sum or client-level DP
        with an aggregator that needs every update; an attack that replaces updates
        behind secure aggregation; a fixed cohort smaller than the aggregator's
        :meth:`~privfl.Aggregator.minimum_updates`.
    """
    secure = [i for i, m in enumerate(mechanisms) if m.sums_securely]
    if len(secure) > 1:
        raise ConfigError(
            "mechanisms",
            [mechanisms[i].name for i in secure],
            "at most one secure-aggregation mechanism",
        )
    needs_sum = [m.name for m in mechanisms if m.fixed_denominator or m.sums_securely]
    if needs_sum and not aggregator.works_on_secure_sum:
        raise ConfigError(
            "aggregator",
            aggregator.name,
            f"an aggregator that works on a sum, such as fedavg, with {', '.join(needs_sum)}: "
            f"{aggregator.name} must see every client's update, but secure aggregation "
            "reveals only their sum and client-level DP bounds each client's share of a sum",
        )
    poisons_updates = (
        attack is not None and type(attack).poison_updates is not Attack.poison_updates
    )
    if secure and poisons_updates:
        raise ConfigError(
            "attack",
            attack.name,
            "an attack on labels only with secure aggregation: this attack replaces "
            "updates knowing the benign ones, which the server half never sees then",
        )
    cohort = (
        {"fixed": sampling.size, "all": sampling.population}.get(sampling.kind)
        if sampling
        else None
    )
    needed = aggregator.minimum_updates()
    if cohort is not None and cohort < needed:
        raise ConfigError(
            "aggregator",
            aggregator.name,
            f"a rule that works with the {cohort} updates of a round: {aggregator.name} "
            f"needs at least {needed} (lower its byzantine option, or sample more clients)",
        )
    return secure[0] if secure else None
