"""Built-in secure aggregation: SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020).

The two halves meet only in the protocol's messages. The server half says in each
client's task what the round's protocol is (the clients, the threshold, SecAgg+'s
neighbour graph, the ring and the fixed-point encoding). The client half
(:mod:`privfl.builtin.secure_aggregation_client`, kept by the host between messages) encodes
its own contribution (weighted update, statistics and weight, after any clipping
and noise) to fixed-point integers, appends the number of values it had to clamp
(capped like any encoded value, so that the ring holds the sum of the counts too),
and runs the five phases of :mod:`privfl.secagg`; the server half relays, collects,
checks consistency and unmasks, and learns only the sum (the clamp count included, as
a sum).

Keys and bindings (the threat model is in ``docs/explanation/secure-aggregation.md``):
each client's Ed25519 key derives from a provisioning secret that the client half
carries to every host (:func:`~privfl.secagg.signing.provisioned_key`); the server half
and each host pin the first key they see for a client, which stands for a PKI (trust
on first use). A session id drawn at set-up and the round are bound into every key,
associated data, signature and tag. The client half recomputes the threshold, the
corruption count and the degree from its own options and refuses a weaker round: it
sits that round out, with its reason in the record's ``rejected``, and the run goes on. A
client whose message the server refuses (a bad signature or tag, a replay, a wrong
length) is left out of the sum and named in the record's ``secagg_rejected``; an error
that leaves no sound sum (a client refusing a request of the server mid-protocol, in
process or across hosts alike; shares that contradict each other) aborts the round
(:class:`privfl.RoundAborted`), naming the client.

Each round the server half picks the clamping bound and the ring. The bound is the
user's ``bound``, or less when the federation's mechanisms declare a smaller one
(:meth:`~privfl.PrivacyMechanism.value_bound`: DP's clip norm) and clients contribute
with weight 1 (:func:`~privfl.secagg.encoding.clamp_bound`). The ring is 32 bits wide
when the sum of every client's values, clamped to that bound and scaled by
``2**frac_bits``, fits in it, else 64 bits
(:func:`~privfl.secagg.encoding.ring_bits_for`); ``ring_bits`` fixes it instead, and
a fixed ring too narrow for a round's sum is a configuration error, raised when the
round's tasks are made. Dropouts are real (a client whose reply does not come is
dropped in that phase) and can be simulated with a seeded rate: the server half then
acts as if the chosen clients' messages from a chosen phase on never arrived. A round
with too few clients left is aborted (:class:`privfl.RoundAborted`) with the global
model unchanged.

With a compressor whose codes add up (``shared-grid``,
:mod:`privfl.builtin.secure_quantizer`) clients send its integer codes instead of
fixed-point values: the ring is the narrowest that holds the round's sum of codes
(:func:`~privfl.secagg.quantization.code_ring_bits`, any width from 1 to 64 bits), the
masked inputs travel packed at that width, and the server decodes the sum of codes
into the sum of the clients' dequantized contributions. The record then also holds
``secagg_code_bits``, ``secagg_input_bytes`` and ``uplink_bytes``.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, cast

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from privfl.builtin.secure_aggregation_client import (
    SecAggProtocolClient,
    check_round_parameters,
    grid_coding,
)
from privfl.builtin.secure_quantizer import GridCoding
from privfl.errors import ConfigError, RoundAborted
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
    KeyDirectory,
    ProtocolError,
    SecAggConfig,
    SecAggServer,
    clamp_bound,
    decode,
    ring_bits_for,
    secagg_config,
)
from privfl.secagg.arena import MessageArena
from privfl.secagg.encoding import FLOAT32_SLACK
from privfl.secagg.signing import provisioned_key
from privfl.seeding import derive_seed


class SecAgg(PrivacyMechanism):
    """Secure aggregation with pairwise masks among all of a round's clients.

    :param dropout: Simulated fraction of clients that drop out (seeded), at a
        random phase of the protocol.
    :param tolerated_dropout: The dropout rate the threshold is chosen to survive;
        unset: the simulated rate, at least 0.1.
    :param corruption_rate: The fraction of clients assumed to collude with the server.
    :param frac_bits: Fractional bits of the fixed-point encoding (precision 2^-frac_bits).
    :param bound: Values are clamped to [-bound, bound] before encoding, or to the
        smaller bound the other mechanisms declare, such as DP's clip norm (the number of
        clamped values, summed securely, is in the round's record).
    :param ring_bits: 32 or 64 to fix the ring; unset: the smallest ring that holds each
        round's sum.
    :param malicious_server: Guard against a server that deviates from the protocol (a
        majority of the round must sign the survivor set); false: against a semi-honest
        one only (t signatures), so that rounds survive losing half their clients.

    With a compressor whose codes add up (:attr:`privfl.Compressor.sums_in_ring`, such
    as ``shared-grid``), clients sum its integer codes instead of fixed-point values, in
    the narrowest ring that holds the round's sum (or ``ring_bits``, if at least that
    wide); ``frac_bits`` and ``bound`` then play no part.
    """

    name = "secagg"
    variant: ClassVar[str] = "secagg"
    sums_securely = True
    sums_codes = True
    flags = MappingProxyType({"dropout": "--dropout"})

    def __init__(
        self,
        dropout: float = 0.0,
        tolerated_dropout: float | None = None,
        corruption_rate: float = 0.1,
        frac_bits: int = 24,
        bound: float = 2.0**20,
        ring_bits: int | None = None,
        malicious_server: bool = True,
    ) -> None:
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ConfigError("dropout", dropout, "a fraction in [0, 1)")
        if tolerated_dropout is not None and not 0 <= tolerated_dropout < 1:
            raise ConfigError("tolerated_dropout", tolerated_dropout, "a fraction in [0, 1)")
        if not 0 <= corruption_rate < 1:
            raise ConfigError("corruption_rate", corruption_rate, "a fraction in [0, 1)")
        if not (isinstance(frac_bits, int) and 0 <= frac_bits <= 40):
            raise ConfigError("frac_bits", frac_bits, "an integer in 0..40")
        if not (isinstance(bound, (int, float)) and 0 < bound < math.inf):
            raise ConfigError("bound", bound, "a finite number > 0")
        if ring_bits not in (None, 32, 64):
            raise ConfigError("ring_bits", ring_bits, "32 or 64, or unset to choose per round")
        if not isinstance(malicious_server, bool):
            raise ConfigError("malicious_server", malicious_server, "true or false")
        self.dropout = float(dropout)
        self.tolerated_dropout = (
            max(self.dropout, 0.1) if tolerated_dropout is None else float(tolerated_dropout)
        )
        self.corruption_rate = float(corruption_rate)
        self.frac_bits = frac_bits
        self.bound = float(bound)
        self.ring_bits = ring_bits
        self.malicious_server = malicious_server
        self.seed = 0
        """Seed of the simulated dropouts and the neighbour graph (set up from the
        federation's seed)."""
        self._mechanisms: tuple[PrivacyMechanism, ...] = ()
        self._unit_weights = False
        self._quantizer: Any = None  # a compressor whose codes add up, or None
        self._session = b""  # drawn at set-up
        self._provisioning = secrets.token_bytes(32)  # client half: the clients' keys
        self._last_protocol: tuple[tuple[Any, ...], SecAggConfig] | None = None
        self._fresh_keys()

    def _fresh_keys(self) -> None:
        self._registered = KeyDirectory(first_use=True)  # server half: clients' keys
        self._signing_keys: dict[int, Ed25519PrivateKey] = {}  # client half: derived
        self._pinned = KeyDirectory(first_use=True)  # client half: keys this host trusts
        self._arena = MessageArena()  # client half: where this host's clients mask inputs

    def __getstate__(self) -> dict[str, Any]:
        """The mechanism without the kept protocol settings and keys: a copy sent to
        another host derives its clients' keys again and pins its own."""
        return {
            **self.__dict__,
            "_last_protocol": None,
            "_registered": None,
            "_signing_keys": None,
            "_pinned": None,
            "_arena": None,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fresh_keys()

    def setup(self, context: MechanismSetup) -> None:
        self._session = secrets.token_bytes(16)
        self.seed = derive_seed(context.seed, "secagg", context.position)
        self._mechanisms = context.mechanisms
        self._unit_weights = context.unit_weights
        compressor = context.compressor
        self._quantizer = compressor if compressor is not None and compressor.sums_in_ring else None
        self.coding(0)  # refuses example-count weights the compressor cannot bound

    def _declared_bound(self) -> float | None:
        """The bound the mechanisms declare on every value a client sends, or None."""
        declared: float | None = None  # the update as trained: no bound known
        for mechanism in self._mechanisms:
            declared = mechanism.value_bound(declared)
        return declared

    def round_bound(self) -> float:
        """This round's clamping bound: ``bound``, or less if the mechanisms declare less."""
        return clamp_bound(self.bound, self._declared_bound(), unit_weights=self._unit_weights)

    def coding(self, round: int) -> GridCoding | None:
        """The round's integer coding with a compressor whose codes add up, else None.

        Its range is the compressor's ``range``, or the declared bound (with float32
        room, see :data:`~privfl.secagg.encoding.FLOAT32_SLACK`) when that is smaller.
        """
        if self._quantizer is None:
            return None
        declared = self._declared_bound()
        radius = self._quantizer.range
        if declared is not None and declared > 0:
            radius = min(radius, declared * (1 + FLOAT32_SLACK))
        coding = self._quantizer.coding(round=round, radius=radius, unit_weights=self._unit_weights)
        return cast(GridCoding, coding)

    def _ring_bits(self, round: int, client_ids: Sequence[int]) -> int:
        """The round's ring: the narrowest that holds the sum, or ``ring_bits`` if set."""
        coding = self.coding(round)
        if coding is None:
            return ring_bits_for(
                self.round_bound(), self.frac_bits, len(client_ids), requested=self.ring_bits
            )
        needed = coding.ring_bits(len(client_ids))
        if self.ring_bits is not None and self.ring_bits < needed:
            raise ConfigError(
                "ring_bits",
                self.ring_bits,
                f"a ring of at least {needed} bits for the sum of {len(client_ids)} clients' "
                f"{coding.bits}-bit codes: set ring_bits = 64, or leave it unset",
            )
        return needed if self.ring_bits is None else self.ring_bits

    def _round_config(self, round: int, client_ids: Sequence[int]) -> SecAggConfig:
        """The round's protocol settings: the same on both halves, computed by the server."""
        ring_bits = self._ring_bits(round, client_ids)
        return secagg_config(
            client_ids,
            variant=self.variant,
            dropout_rate=self.tolerated_dropout,
            corruption_rate=self.corruption_rate,
            ring_bits=ring_bits,
            seed=derive_seed(self.seed, "secagg", round),
            session=self._session,
            round=round,
            majority=self.malicious_server,
        )

    def client_config(self, *, round: int, client_ids: Sequence[int]) -> dict[str, Any]:
        config = self._round_config(round, client_ids)
        coding = self.coding(round)
        encoding: dict[str, Any] = (
            {"frac_bits": self.frac_bits, "bound": self.round_bound()}
            if coding is None
            else {
                "code_bits": coding.bits,
                "radius": coding.radius,
                "dimension": coding.dimension,
                "rotation_seed": coding.rotation_seed,
                "max_weight": coding.max_weight,
                "code_seed": derive_seed(self.seed, "codes", round),
            }
        )
        values: dict[str, Any] = {
            "threshold": config.threshold,
            "ring_bits": config.ring_bits,
            **encoding,
            "ids": torch.tensor(config.client_ids, dtype=torch.int64),
            "session": torch.tensor(list(config.session), dtype=torch.uint8),
            "round": round,
            "corrupted": config.corrupted,
        }
        if config.neighbours is not None:
            values["graph"] = torch.tensor(
                [sorted(config.neighbours[u]) for u in config.client_ids], dtype=torch.int64
            )
        return values

    def secure_client(self, *, client_id: int, config: Mapping[str, Any]) -> SecureSumClient:
        if client_id not in self._signing_keys:
            self._signing_keys[client_id] = provisioned_key(self._provisioning, client_id)
        return SecAggProtocolClient(
            client_id,
            self._protocol(config),
            int(config.get("frac_bits", 0)),
            float(config.get("bound", 1.0)),
            signing_key=self._signing_keys[client_id],
            directory=self._pinned,
            coding=grid_coding(config, client_id),
            arena=self._arena,
        )

    def _protocol(self, config: Mapping[str, Any]) -> SecAggConfig:
        """The round's protocol settings, read from a task's config.

        Reading and checking the neighbour graph costs O(n k) for n clients of degree
        k, so a host that serves many clients of one round reads it once: the last
        one read is kept, under the bytes it was read from.
        """
        graph = config.get("graph")
        key = (
            int(config["threshold"]),
            int(config["ring_bits"]),
            config["ids"].numpy().tobytes(),
            None if graph is None else graph.numpy().tobytes(),
            config["session"].numpy().tobytes(),
            int(config["round"]),
            int(config["corrupted"]),
        )
        if self._last_protocol is None or self._last_protocol[0] != key:
            ids = tuple(int(u) for u in config["ids"].tolist())
            neighbours = (
                None
                if graph is None
                else {u: frozenset(row) for u, row in zip(ids, graph.tolist(), strict=True)}
            )
            protocol = SecAggConfig(
                len(ids),
                key[0],
                neighbours,
                key[1],
                ids,
                key[4],
                key[5],
                key[6],
                majority=self.malicious_server,  # the client's own option, not the server's
            )
            check_round_parameters(
                protocol,
                variant=self.variant,
                tolerated_dropout=self.tolerated_dropout,
                corruption_rate=self.corruption_rate,
            )
            self._last_protocol = (key, protocol)
        return self._last_protocol[1]

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
        inputs: dict[int, int] = {}  # client -> bytes of its masked input

        def arrived(replies: Mapping[int, bytes], phase: str) -> dict[int, bytes]:
            kept = {c: m for c, m in replies.items() if c not in getattr(plan, phase)}
            for client, message in kept.items():
                sent[client] += len(message)
                if phase == "masked_input":
                    inputs[client] = len(message)
            return kept

        def send(phase: str, messages: Mapping[int, bytes]) -> dict[int, bytes]:
            for client, message in messages.items():
                received[client] += len(message)
            return arrived(exchange(phase, messages), phase)

        started = time.perf_counter()
        server = SecAggServer(config, directory=self._registered)
        try:
            keys = server.collect_keys(arrived(first, "advertise_keys"))
            relays = server.relay_shares(send("share_keys", keys))
            survivor_sets = server.collect_masked_inputs(send("masked_input", relays))
            survivors = sorted(survivor_sets)
            requests = server.collect_signatures(send("consistency_check", survivor_sets))
            total = server.unmask(send("unmasking", requests))
        except ProtocolError as error:  # no sound sum this round; the model stays
            raise RoundAborted(f"secure aggregation stopped: {error}") from error
        seconds = time.perf_counter() - started
        coding = self.coding(round)
        if coding is None:
            summed = torch.from_numpy(decode(total[:-1], frac_bits=self.frac_bits))
            clamped = int(total[-1])
        else:
            summed, clamped = coding.decode(total, len(survivors))
        values = {
            "secagg_clamped": clamped,
            "secagg_ring_bits": config.ring_bits,
            "secagg_bound": self.round_bound(),
            "secagg_seconds": seconds,
            "secagg_contributors": len(survivors),
            "secagg_dropped": {phase: ids for phase, ids in server.dropped.items() if ids},
            "secagg_rejected": {str(c): server.rejected[c] for c in sorted(server.rejected)},
            "secagg_kb_sent_per_client": sum(sent.values()) / len(sent) / 1000,
            "secagg_bytes_sent": {str(c): sent[c] for c in sorted(sent)},
            "secagg_bytes_received": {str(c): received[c] for c in sorted(received)},
        }
        if coding is not None:
            values["secagg_code_bits"] = coding.bits
            values["secagg_bound"] = coding.radius
            # The update's bytes: each survivor's masked input, as for a compressor.
            values["uplink_bytes"] = sum(inputs[c] for c in survivors) / len(survivors)
            values["secagg_input_bytes"] = {str(c): inputs[c] for c in sorted(inputs)}
        return SecureSum(total=summed.to(torch.float32), contributors=survivors, values=values)


class SecAggPlus(SecAgg):
    """SecAgg+: masks shared with O(log n) neighbours on a random graph (Bell et al. 2020)."""

    name = "secagg+"
    variant = "secagg+"


@hookimpl
def privfl_register_mechanisms() -> list[type]:
    return [SecAgg, SecAggPlus]
