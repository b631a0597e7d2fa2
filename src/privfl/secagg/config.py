"""The public settings of one secure-aggregation round, known to clients and server alike.

:func:`secagg_config` turns the user's stated dropout and corruption rates into a
threshold and, for SecAgg+, a random sparse neighbour graph (:mod:`.parameters`,
:mod:`.graph`); :class:`SecAggConfig` can also be written by hand, for example in tests.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from privfl.errors import ConfigError
from privfl.secagg.encoding import word_dtype
from privfl.secagg.graph import harary_graph
from privfl.secagg.parameters import secagg_plus_parameters, secagg_threshold

VARIANTS = ("secagg", "secagg+")
MAX_CLIENT_ID = 2**32 - 1  # ids travel as u32


@dataclass(frozen=True)
class SecAggConfig:
    """Who takes part, the Shamir threshold, the neighbour graph and the ring.

    :param num_clients: Clients in the round.
    :param threshold: Shamir threshold t: shares of a client's secrets go to its
        neighbours and any t of them recover the secrets; fewer reveal nothing.
    :param neighbours: Each client's neighbours (symmetric, no self-loops), or ``None``
        for the complete graph of plain SecAgg.
    :param ring_bits: k of the ring ``Z_2^k`` the inputs are summed in: 32
        (``numpy.uint32`` inputs) or 64 (``numpy.uint64``) for fixed-point values, any k
        from 1 to 64 for non-negative integer codes (words of :attr:`dtype`, with masks
        and sums reduced modulo ``2^k``).
    :param client_ids: The clients' ids, distinct integers in ``[0, 2^32)``; empty
        means ``0 .. num_clients - 1``. Stored as a sorted tuple.
    :param session: The session's id (at most 64 bytes), and
    :param round: the round's number: both are bound into every key, associated data
        and signature of the round, so no message of another session or round is
        accepted.
    :param corrupted: How many clients may collude with the server; sets the
        consistency check's :attr:`quorum`.
    :param majority: Whether the consistency check needs a majority :attr:`quorum`
        (against a server that deviates from the protocol) or only t signatures
        (against a semi-honest server; rounds then survive losing half their clients).
    :raises ConfigError: for any inconsistency, for example a client with fewer than
        ``threshold`` neighbours.
    """

    num_clients: int
    threshold: int
    neighbours: Mapping[int, frozenset[int]] | None = field(default=None, hash=False)
    ring_bits: int = 64
    client_ids: tuple[int, ...] = ()
    session: bytes = b""
    round: int = 0
    corrupted: int = 0
    majority: bool = True

    def __post_init__(self) -> None:
        n = self.num_clients
        if not (isinstance(n, int) and n >= 2):
            raise ConfigError("num_clients", n, "an integer >= 2")
        try:  # operator.index takes Python and numpy integers, and nothing else
            given = range(n) if len(self.client_ids) == 0 else self.client_ids
            ids = tuple(sorted(operator.index(u) for u in given))
        except TypeError as error:
            raise ConfigError("client_ids", self.client_ids, "integers") from error
        if len(ids) != n or len(set(ids)) != n:
            raise ConfigError("client_ids", self.client_ids, f"{n} distinct ids")
        if not 0 <= ids[0] <= ids[-1] <= MAX_CLIENT_ID:
            raise ConfigError("client_ids", self.client_ids, "integers in [0, 2^32)")
        object.__setattr__(self, "client_ids", ids)
        if not (isinstance(self.session, bytes) and len(self.session) <= 64):
            raise ConfigError("session", self.session, "at most 64 bytes")
        if not (isinstance(self.round, int) and 0 <= self.round < 2**63):
            raise ConfigError("round", self.round, "an integer in [0, 2^63)")
        if not (isinstance(self.corrupted, int) and 0 <= self.corrupted < n):
            raise ConfigError("corrupted", self.corrupted, f"an integer in [0, {n})")
        word_dtype(self.ring_bits)
        if self.neighbours is not None:
            object.__setattr__(self, "neighbours", _checked_graph(self.neighbours, ids))
        fewest = n - 1 if self.neighbours is None else min(map(len, self.neighbours.values()))
        if not (isinstance(self.threshold, int) and 1 <= self.threshold <= fewest):
            raise ConfigError(
                "threshold", self.threshold, f"an integer in [1, {fewest}] (the fewest neighbours)"
            )

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the ring's words (``uint32`` for k <= 32, else ``uint64``)."""
        return word_dtype(self.ring_bits)

    @property
    def quorum(self) -> int:
        """Signatures on one survivor set a client needs before it reveals any share.

        Honest clients sign one survivor set each, so two sets signed by ``q`` clients
        each share at least ``2 q - num_clients`` signers, all honest unless corrupted:
        with ``2 q > num_clients + corrupted`` no two different sets both reach the
        quorum, and every honest client that reveals shares saw the same set. The
        threshold t alone does not ensure this in SecAgg+, where ``2 t`` is far below
        ``n`` (Bonawitz et al. 2017, the ConsistencyCheck round, and its majority
        condition); the quorum is the larger of the two. Without ``majority`` it is t,
        which stops a server that deviates only if ``2 t > n + corrupted``.
        """
        if not self.majority:
            return self.threshold
        return max(self.threshold, (self.num_clients + self.corrupted) // 2 + 1)

    def neighbours_of(self, client: int) -> frozenset[int]:
        """The clients that ``client`` masks with and shares its secrets to."""
        if self.neighbours is None:
            return frozenset(self.client_ids) - {client}
        return self.neighbours[client]


def _checked_graph(
    neighbours: Mapping[int, frozenset[int]], ids: tuple[int, ...]
) -> Mapping[int, frozenset[int]]:
    graph = {u: frozenset(vs) for u, vs in neighbours.items()}
    if set(graph) != set(ids):
        raise ConfigError("neighbours", sorted(graph), f"one entry for each of {list(ids)}")
    for u, vs in graph.items():
        if u in vs or not vs <= graph.keys() or any(u not in graph[v] for v in vs):
            raise ConfigError(
                f"neighbours[{u}]",
                sorted(vs),
                "other client ids, symmetric (v in N(u) iff u in N(v))",
            )
    return MappingProxyType(graph)


def secagg_config(
    client_ids: Sequence[int],
    *,
    variant: str,
    dropout_rate: float,
    corruption_rate: float,
    ring_bits: int,
    seed: int,
    session: bytes = b"",
    round: int = 0,
    majority: bool = True,
) -> SecAggConfig:
    """The round's configuration for the stated rates.

    :param client_ids: The clients of the round.
    :param variant: ``"secagg"`` (complete graph, threshold from
        :func:`~privfl.secagg.parameters.secagg_threshold`) or ``"secagg+"`` (Harary
        graph of the degree from :func:`~privfl.secagg.parameters.secagg_plus_parameters`,
        or the complete graph when that degree is ``n - 1``).
    :param dropout_rate: The fraction of clients that may drop out during the round.
    :param corruption_rate: The fraction that may collude with the server.
    :param ring_bits: 32 or 64 (see :func:`~privfl.secagg.encoding.ring_bits_for`), or
        any k from 1 to 64 for integer codes (see
        :func:`~privfl.secagg.quantization.code_ring_bits`).
    :param seed: Seed of SecAgg+'s graph: keep it from the clients (the round seed).
    :param session: The session id and
    :param round: the round bound into the round's keys and signatures.
    :param majority: See :class:`SecAggConfig`.
    :raises ConfigError: for an unknown variant or rates that no threshold can meet.
    """
    ids = tuple(client_ids)
    n = len(ids)
    corrupted = math.floor(corruption_rate * n + 1e-9)
    if variant == "secagg":
        t = secagg_threshold(n, dropout_rate=dropout_rate, corruption_rate=corruption_rate)
        return SecAggConfig(n, t, None, ring_bits, ids, session, round, corrupted, majority)
    if variant == "secagg+":
        k, t = secagg_plus_parameters(n, dropout_rate=dropout_rate, corruption_rate=corruption_rate)
        graph = None if k >= n - 1 else harary_graph(ids, k, seed=seed)
        return SecAggConfig(n, t, graph, ring_bits, ids, session, round, corrupted, majority)
    raise ConfigError("variant", variant, " or ".join(map(repr, VARIANTS)))
