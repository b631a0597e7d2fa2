"""Built-in secure aggregation: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

The two halves meet only in the protocol's messages. The server half says in each
client's task what the round's protocol is (the clients, the threshold, SecAgg+'s
neighbour graph, the ring and the fixed-point encoding). The client half
(``SecAggProtocolClient``, kept by the client's host between messages) encodes
its own contribution (weighted update, statistics and weight, after any clipping
and noise) to fixed-point integers, appends the number of values it had to clamp,
and runs the four phases of :mod:`privfl.secagg`; the server half relays, collects
and unmasks, and learns only the sum (the clamp count included, as a sum).

The ring is 32 bits wide when the sum of every client's values, clamped to ``bound``
and scaled by ``2**frac_bits``, fits in it, else 64 bits; more clients than 64 bits
can hold is a configuration error. Dropouts are real (a client whose reply does not
come is dropped in that phase) and can be simulated with a seeded rate: the server
half then acts as if the chosen clients' messages from a chosen phase on never
arrived. A round with too few clients left is aborted (:class:`privfl.RoundAborted`)
with the global model unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from privfl.errors import ConfigError
from privfl.mechanisms import (
    Exchange,
    MechanismSetup,
    PrivacyMechanism,
    SecureSum,
    SecureSumClient,
)
from privfl.plugins import hookimpl
from privfl.secagg import (
    DropoutPlan,
    ProtocolError,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    decode,
    encode,
    ring_bits_for,
    secagg_config,
)
from privfl.seeding import derive_seed

PHASE_STEPS = {"share_keys": "share_keys", "masked_input": "masked_input", "unmasking": "unmask"}
"""Phase of the client's reply -> the :class:`SecAggClient` method that writes it."""


class SecAggProtocolClient(SecureSumClient):
    """One client's side of a SecAgg round: its encoded contribution and protocol state."""

    first_phase = "advertise_keys"

    def __init__(self, client_id: int, config: SecAggConfig, frac_bits: int, bound: float) -> None:
        self._client = SecAggClient(client_id, config)
        self._config = config
        self._frac_bits = frac_bits
        self._bound = bound
        self._input: np.ndarray | None = None
        self._finished = False

    def start(self, contribution: torch.Tensor) -> bytes:
        dtype = self._config.dtype
        encoded, clamped = encode(
            contribution, frac_bits=self._frac_bits, bound=self._bound, dtype=dtype
        )
        self._input = np.append(encoded, np.array([clamped], dtype=dtype))
        return self._client.advertise_keys()

    def step(self, phase: str, data: bytes) -> bytes:
        if phase not in PHASE_STEPS:
            raise ProtocolError(f"client {self._client.client_id}: no secure phase {phase!r}")
        method = getattr(self._client, PHASE_STEPS[phase])
        if phase == "masked_input":
            return method(data, self._input)
        reply = method(data)
        self._finished = phase == "unmasking"
        return reply

    @property
    def finished(self) -> bool:
        return self._finished


class SecAgg(PrivacyMechanism):
    """Secure aggregation with pairwise masks among all of a round's clients.

    :param dropout: Simulated fraction of clients that drop out (seeded), at a
        random phase of the protocol.
    :param tolerated_dropout: The dropout rate the threshold is chosen to survive;
        unset: the simulated rate, at least 0.1.
    :param corruption_rate: The fraction of clients assumed to collude with the server.
    :param frac_bits: Fractional bits of the fixed-point encoding (precision 2^-frac_bits).
    :param bound: Values are clamped to [-bound, bound] before encoding (the number of
        clamped values, summed securely, is in the round's record).
    """

    name = "secagg"
    variant: ClassVar[str] = "secagg"
    sums_securely = True
    flags = MappingProxyType({"dropout": "--dropout"})

    def __init__(
        self,
        dropout: float = 0.0,
        tolerated_dropout: float | None = None,
        corruption_rate: float = 0.1,
        frac_bits: int = 24,
        bound: float = 2.0**20,
    ) -> None:
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ConfigError("dropout", dropout, "a fraction in [0, 1)")
        if tolerated_dropout is not None and not 0 <= tolerated_dropout < 1:
            raise ConfigError("tolerated_dropout", tolerated_dropout, "a fraction in [0, 1)")
        if not 0 <= corruption_rate < 1:
            raise ConfigError("corruption_rate", corruption_rate, "a fraction in [0, 1)")
        if not (isinstance(frac_bits, int) and 0 <= frac_bits <= 40):
            raise ConfigError("frac_bits", frac_bits, "an integer in 0..40")
        if not bound > 0:
            raise ConfigError("bound", bound, "a number > 0")
        self.dropout = float(dropout)
        self.tolerated_dropout = (
            max(self.dropout, 0.1) if tolerated_dropout is None else float(tolerated_dropout)
        )
        self.corruption_rate = float(corruption_rate)
        self.frac_bits = frac_bits
        self.bound = float(bound)
        self.seed = 0
        """Seed of the simulated dropouts and the neighbour graph (set up from the
        federation's seed)."""

    def setup(self, context: MechanismSetup) -> None:
        self.seed = derive_seed(context.seed, "secagg", context.position)

    def _round_config(self, round: int, client_ids: Sequence[int]) -> SecAggConfig:
        """The round's protocol settings: the same on both halves, computed by the server."""
        ring_bits = ring_bits_for(self.bound, self.frac_bits, len(client_ids))
        return secagg_config(
            client_ids,
            variant=self.variant,
            dropout_rate=self.tolerated_dropout,
            corruption_rate=self.corruption_rate,
            ring_bits=ring_bits,
            seed=derive_seed(self.seed, "secagg", round),
        )

    def client_config(self, *, round: int, client_ids: Sequence[int]) -> dict[str, Any]:
        config = self._round_config(round, client_ids)
        values: dict[str, Any] = {
            "threshold": config.threshold,
            "ring_bits": config.ring_bits,
            "frac_bits": self.frac_bits,
            "bound": self.bound,
            "ids": torch.tensor(config.client_ids, dtype=torch.int64),
        }
        if config.neighbours is not None:
            values["graph"] = torch.tensor(
                [sorted(config.neighbours[u]) for u in config.client_ids], dtype=torch.int64
            )
        return values

    def secure_client(self, *, client_id: int, config: Mapping[str, Any]) -> SecureSumClient:
        ids = tuple(int(u) for u in config["ids"].tolist())
        graph = config.get("graph")
        neighbours = (
            None
            if graph is None
            else {u: frozenset(row) for u, row in zip(ids, graph.tolist(), strict=True)}
        )
        protocol = SecAggConfig(
            len(ids), int(config["threshold"]), neighbours, int(config["ring_bits"]), ids
        )
        return SecAggProtocolClient(
            client_id, protocol, int(config["frac_bits"]), float(config["bound"])
        )

    def secure_sum(
        self,
        *,
        round: int,
        client_ids: Sequence[int],
        first: Mapping[int, bytes],
        exchange: Exchange,
    ) -> SecureSum:
        config = self._round_config(round, client_ids)
        round_seed = derive_seed(self.seed, "secagg", round)
        plan = DropoutPlan.random(client_ids, self.dropout, seed=derive_seed(round_seed, "drop"))
        sent = dict.fromkeys(client_ids, 0)
        received = dict.fromkeys(client_ids, 0)

        def arrived(replies: Mapping[int, bytes], phase: str) -> dict[int, bytes]:
            kept = {c: m for c, m in replies.items() if c not in getattr(plan, phase)}
            for client, message in kept.items():
                sent[client] += len(message)
            return kept

        def send(phase: str, messages: Mapping[int, bytes]) -> dict[int, bytes]:
            for client, message in messages.items():
                received[client] += len(message)
            return arrived(exchange(phase, messages), phase)

        started = time.perf_counter()
        server = SecAggServer(config)
        keys = server.collect_keys(arrived(first, "advertise_keys"))
        relays = server.relay_shares(send("share_keys", keys))
        requests = server.collect_masked_inputs(send("masked_input", relays))
        survivors = sorted(requests)
        total = server.unmask(send("unmasking", requests))
        seconds = time.perf_counter() - started
        values = {
            "secagg_clamped": int(total[-1]),
            "secagg_ring_bits": config.ring_bits,
            "secagg_seconds": seconds,
            "secagg_contributors": len(survivors),
            "secagg_dropped": {phase: ids for phase, ids in server.dropped.items() if ids},
            "secagg_kb_sent_per_client": sum(sent.values()) / len(sent) / 1000,
            "secagg_bytes_sent": {str(c): sent[c] for c in sorted(sent)},
            "secagg_bytes_received": {str(c): received[c] for c in sorted(received)},
        }
        summed = torch.from_numpy(decode(total[:-1], frac_bits=self.frac_bits))
        return SecureSum(total=summed.to(torch.float32), contributors=survivors, values=values)


class SecAggPlus(SecAgg):
    """SecAgg+: masks shared with O(log n) neighbours on a random graph (Bell et al. 2020)."""

    name = "secagg+"
    variant = "secagg+"


@hookimpl
def privfl_register_mechanisms() -> list[type]:
    return [SecAgg, SecAggPlus]
