"""Built-in secure aggregation: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

The mechanism encodes each client's contribution (its weighted update, statistics
and weight, after any clipping and noise) to fixed-point integers in a ring, runs the
protocol of :mod:`privfl.secagg` between client objects and a server object that
exchange only bytes, and decodes the sum. The ring is 32 bits wide when the sum of
every client's values, clamped to ``bound`` and scaled by ``2**frac_bits``, fits in
it, else 64 bits; more clients than 64 bits can hold is a configuration error.

Dropouts are simulated with a seeded rate; the sum holds exactly the clients whose
masked input reached the server, and a round with too few clients left is aborted
(:class:`privfl.RoundAborted`) with the global model unchanged.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from privfl.components import PrivacyMechanism, SecureSum
from privfl.errors import ConfigError
from privfl.plugins import hookimpl
from privfl.secagg import (
    DropoutPlan,
    decode,
    encode,
    ring_bits_for,
    ring_dtype,
    secagg_config,
    secure_sum,
)
from privfl.seeding import derive_seed


class SecAgg(PrivacyMechanism):
    """Secure aggregation with pairwise masks among all of a round's clients.

    :param dropout: Simulated fraction of clients that drop out (seeded), at a
        random phase of the protocol.
    :param tolerated_dropout: The dropout rate the threshold is chosen to survive;
        unset: the simulated rate, at least 0.1.
    :param corruption_rate: The fraction of clients assumed to collude with the server.
    :param frac_bits: Fractional bits of the fixed-point encoding (precision 2^-frac_bits).
    :param bound: Values are clamped to [-bound, bound] before encoding (the count of
        clamped values is in the round's record).
    """

    name = "secagg"
    variant: ClassVar[str] = "secagg"
    sums_securely = True
    config_keys = ("dropout",)

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
        """Seed of the simulated dropouts and the neighbour graph, set from the
        federation's seed when it is configured."""
        self._values: dict[str, Any] = {}

    def secure_sum(
        self, contributions: torch.Tensor, *, client_ids: list[int], round: int
    ) -> SecureSum:
        ring_bits = ring_bits_for(self.bound, self.frac_bits, len(client_ids))
        dtype = ring_dtype(ring_bits)
        inputs, clamped = {}, 0
        for client, row in zip(client_ids, contributions, strict=True):
            inputs[client], count = encode(
                row, frac_bits=self.frac_bits, bound=self.bound, dtype=dtype
            )
            clamped += count
        round_seed = derive_seed(self.seed, "secagg", round)
        config = secagg_config(
            client_ids,
            variant=self.variant,
            dropout_rate=self.tolerated_dropout,
            corruption_rate=self.corruption_rate,
            ring_bits=ring_bits,
            seed=round_seed,
        )
        plan = DropoutPlan.random(client_ids, self.dropout, seed=derive_seed(round_seed, "drop"))
        self._values = {"secagg_clamped": clamped, "secagg_ring_bits": ring_bits}
        started = time.perf_counter()
        try:
            outcome = secure_sum(inputs, config, dropout=plan)
        finally:
            self._values["secagg_seconds"] = time.perf_counter() - started
        total = torch.from_numpy(decode(outcome.total, frac_bits=self.frac_bits))
        sent = outcome.bytes_sent
        self._values.update(
            {
                "secagg_contributors": len(outcome.survivors),
                "secagg_dropped": {phase: ids for phase, ids in outcome.dropped.items() if ids},
                "secagg_kb_sent_per_client": sum(sent.values()) / len(sent) / 1000,
                "secagg_bytes_sent": {str(c): n for c, n in sorted(sent.items())},
                "secagg_bytes_received": {
                    str(c): n for c, n in sorted(outcome.bytes_received.items())
                },
            }
        )
        return SecureSum(total=total.to(contributions.dtype), contributors=outcome.survivors)

    def round_values(self) -> dict[str, Any]:
        values, self._values = self._values, {}
        return values


class SecAggPlus(SecAgg):
    """SecAgg+: masks shared with O(log n) neighbours on a random graph (Bell et al. 2020)."""

    name = "secagg+"
    variant = "secagg+"


@hookimpl
def privfl_register_mechanisms() -> list[type]:
    return [SecAgg, SecAggPlus]


@hookimpl
def privfl_configure(federation) -> None:
    """Derive each secure-aggregation mechanism's seed from the federation's."""
    for position, mechanism in enumerate(federation.mechanisms):
        if isinstance(mechanism, SecAgg):
            mechanism.seed = derive_seed(federation.seed, "secagg", position)
