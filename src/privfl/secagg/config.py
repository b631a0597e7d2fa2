"""The public settings of one secure-aggregation round, known to clients and server alike.

:func:`secagg_config` turns the user's stated dropout and corruption rates into a
threshold and, for SecAgg+, a random sparse neighbour graph (:mod:`.parameters`,
:mod:`.graph`); :class:`SecAggConfig` can also be written by hand, for example in tests.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from privfl.errors import ConfigError
from privfl.secagg.encoding import ring_dtype
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
    :param ring_bits: 32 (``numpy.uint32`` inputs) or 64 (``numpy.uint64``).
    :param client_ids: The clients' ids, distinct integers in ``[0, 2^32)``; empty
        means ``0 .. num_clients - 1``. Stored as a sorted tuple.
    :raises ConfigError: for any inconsistency, for example a client with fewer than
        ``threshold`` neighbours.
    """

    num_clients: int
    threshold: int
    neighbours: Mapping[int, frozenset[int]] | None = field(default=None, hash=False)
    ring_bits: int = 64
    client_ids: tuple[int, ...] = ()

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
        ring_dtype(self.ring_bits)
        if self.neighbours is not None:
            object.__setattr__(self, "neighbours", _checked_graph(self.neighbours, ids))
        fewest = n - 1 if self.neighbours is None else min(map(len, self.neighbours.values()))
        if not (isinstance(self.threshold, int) and 1 <= self.threshold <= fewest):
            raise ConfigError(
                "threshold", self.threshold, f"an integer in [1, {fewest}] (the fewest neighbours)"
            )

    @property
    def dtype(self) -> np.dtype:
        """The ring's numpy dtype."""
        return ring_dtype(self.ring_bits)

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
) -> SecAggConfig:
    """The round's configuration for the stated rates.

    :param client_ids: The clients of the round.
    :param variant: ``"secagg"`` (complete graph, threshold from
        :func:`~privfl.secagg.parameters.secagg_threshold`) or ``"secagg+"`` (Harary
        graph of the degree from :func:`~privfl.secagg.parameters.secagg_plus_parameters`,
        or the complete graph when that degree is ``n - 1``).
    :param dropout_rate: The fraction of clients that may drop out during the round.
    :param corruption_rate: The fraction that may collude with the server.
    :param ring_bits: 32 or 64 (see :func:`~privfl.secagg.encoding.ring_bits_for`).
    :param seed: Seed of SecAgg+'s graph: keep it from the clients (the round seed).
    :raises ConfigError: for an unknown variant or rates that no threshold can meet.
    """
    ids = tuple(client_ids)
    n = len(ids)
    if variant == "secagg":
        t = secagg_threshold(n, dropout_rate=dropout_rate, corruption_rate=corruption_rate)
        return SecAggConfig(n, t, None, ring_bits, ids)
    if variant == "secagg+":
        k, t = secagg_plus_parameters(n, dropout_rate=dropout_rate, corruption_rate=corruption_rate)
        graph = None if k >= n - 1 else harary_graph(ids, k, seed=seed)
        return SecAggConfig(n, t, graph, ring_bits, ids)
    raise ConfigError("variant", variant, " or ".join(map(repr, VARIANTS)))
