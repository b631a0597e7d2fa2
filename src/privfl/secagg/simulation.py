"""One secure-aggregation round simulated in one process, with planned dropouts.

:func:`secure_sum` builds a :class:`~privfl.secagg.client.SecAggClient` per client and a
:class:`~privfl.secagg.server.SecAggServer`, and carries the bytes between them as a
network would, counting every byte each client sends and receives, timing the clients
and the server apart, and (if asked) recording every message the server sent or
received. Clients that a :class:`DropoutPlan` lists under a phase stop answering from
that phase on, exactly as a client that lost its connection would. Each client's
signing key comes from :func:`~privfl.secagg.signing.trusted_setup` (the PKI,
before the round).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from privfl.errors import ConfigError
from privfl.secagg.client import SecAggClient
from privfl.secagg.config import SecAggConfig
from privfl.secagg.server import PHASES, SecAggServer
from privfl.secagg.signing import trusted_setup


@dataclass(frozen=True)
class DropoutPlan:
    """Which clients drop out, and when.

    A client listed under a phase does not send its message of that phase, nor any
    later one: under ``advertise_keys`` it never shows up; under ``share_keys`` it
    drops after advertising its keys; under ``masked_input`` after sharing its keys
    (its input is not in the sum); under ``consistency_check`` after sending its
    masked input (its input is in the sum, but it neither signs the survivor set nor
    sends shares); under ``unmasking`` after signing (it sends no shares).
    """

    advertise_keys: frozenset[int] = frozenset()
    share_keys: frozenset[int] = frozenset()
    masked_input: frozenset[int] = frozenset()
    consistency_check: frozenset[int] = frozenset()
    unmasking: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for phase in PHASES:
            ids = frozenset(getattr(self, phase))
            if ids & seen:
                raise ConfigError(phase, sorted(ids & seen), "clients that drop only once")
            seen |= ids
            object.__setattr__(self, phase, ids)

    @classmethod
    def random(
        cls,
        client_ids: Sequence[int],
        rate: float,
        *,
        seed: int,
        phases: Iterable[str] = PHASES,
    ) -> DropoutPlan:
        """``floor(rate * n)`` clients, drawn with ``seed``, each dropping in a random phase.

        :param client_ids: The clients of the round.
        :param rate: The fraction of them that drop out, in [0, 1].
        :param seed: Seed of the choice of clients and phases.
        :param phases: The phases to drop in, each chosen with equal probability.
        """
        phases = tuple(phases)
        if not phases or not set(phases) <= set(PHASES):
            raise ConfigError("phases", phases, f"a non-empty selection of {PHASES}")
        if not (math.isfinite(rate) and 0 <= rate <= 1):
            raise ConfigError("rate", rate, "a fraction in [0, 1]")
        rng = np.random.default_rng(seed)
        count = math.floor(rate * len(client_ids) + 1e-9)
        chosen = rng.choice(np.asarray(client_ids), size=count, replace=False)
        when = rng.integers(len(phases), size=count)
        return cls(
            **{
                phase: frozenset(int(u) for u, w in zip(chosen, when, strict=True) if w == i)
                for i, phase in enumerate(phases)
            }
        )

    def clients(self) -> frozenset[int]:
        """Every client that drops out, in any phase."""
        return frozenset().union(*(getattr(self, f.name) for f in fields(self)))


@dataclass
class SecureSumOutcome:
    """What one round produced and what it cost.

    :ivar total: The ring sum of the survivors' inputs (the inputs' dtype).
    :ivar survivors: The clients whose masked input reached the server, sorted.
    :ivar dropped: Phase -> the clients whose message of that phase never arrived.
    :ivar rejected: Client -> why the server refused its message.
    :ivar bytes_sent: Client id -> bytes it sent to the server.
    :ivar bytes_received: Client id -> bytes the server sent to it.
    :ivar client_seconds: CPU seconds spent inside client objects, summed over clients
        (the simulation runs every step on the calling thread, one client at a time, and
        numpy and OpenSSL start no threads for this work, so its thread time is theirs).
    :ivar server_seconds: CPU seconds spent inside the server object, likewise.
    :ivar transcript: With ``record_transcript``: every message the server received
        (``"up"``) or sent (``"down"``), as ``(way, client id, bytes)`` in order.
    """

    total: np.ndarray
    survivors: list[int]
    dropped: dict[str, list[int]]
    rejected: dict[int, str]
    bytes_sent: dict[int, int]
    bytes_received: dict[int, int]
    client_seconds: float
    server_seconds: float
    transcript: list[tuple[str, int, bytes]] | None = None


@dataclass
class _Network:
    """Carries messages, counts their bytes, times both sides and keeps the transcript."""

    client_ids: Sequence[int]
    record: bool
    sent: dict[int, int] = field(init=False)
    received: dict[int, int] = field(init=False)
    transcript: list[tuple[str, int, bytes]] = field(default_factory=list)
    client_seconds: float = 0.0
    server_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.sent = dict.fromkeys(self.client_ids, 0)
        self.received = dict.fromkeys(self.client_ids, 0)

    def up(
        self, client: int, step: Callable[..., bytes | bytearray | memoryview], *args: Any
    ) -> bytes:
        started = time.thread_time()
        message = bytes(step(*args))
        self.client_seconds += time.thread_time() - started
        self.sent[client] += len(message)
        if self.record:
            self.transcript.append(("up", client, message))
        return message

    def down(self, step: Callable[[dict[int, bytes]], Any], messages: dict[int, bytes]) -> Any:
        started = time.thread_time()
        result = step(messages)
        self.server_seconds += time.thread_time() - started
        if isinstance(result, dict):
            for client, message in result.items():
                self.received[client] += len(message)
                if self.record:
                    self.transcript.append(("down", client, message))
        return result


def secure_sum(
    inputs: Mapping[int, np.ndarray],
    config: SecAggConfig,
    *,
    dropout: DropoutPlan | None = None,
    record_transcript: bool = False,
) -> SecureSumOutcome:
    """Run one round of SecAgg or SecAgg+ on encoded inputs; return the survivors' sum.

    :param inputs: Client id -> its encoded input, a 1-D vector of ``config.dtype``
        (see :func:`~privfl.secagg.encoding.encode`), all of one length: one for each
        client of the config, except that clients the plan drops before they send their
        masked input may be left out.
    :param config: The round's settings (:func:`~privfl.secagg.config.secagg_config`).
    :param dropout: Who drops out when; ``None`` for nobody.
    :param record_transcript: Keep every message the server sent or received.
    :raises ConfigError: for inputs that do not match the config.
    :raises SecAggAborted: (a :class:`privfl.RoundAborted`) when too few clients are
        left in some phase.
    """
    ids = config.client_ids
    plan = dropout if dropout is not None else DropoutPlan()
    if not plan.clients() <= set(ids):
        raise ConfigError("dropout", sorted(plan.clients() - set(ids)), "clients of the round")
    needed = set(ids) - plan.advertise_keys - plan.share_keys - plan.masked_input
    if not needed <= set(inputs) <= set(ids):
        raise ConfigError(
            "inputs", sorted(inputs), f"a vector for each of {sorted(needed)}, and no others"
        )
    vectors = {u: np.asarray(v) for u, v in inputs.items()}
    shapes = {v.shape for v in vectors.values()}
    dtypes = {v.dtype for v in vectors.values()}
    if vectors and (len(shapes) != 1 or len(next(iter(shapes))) != 1 or dtypes != {config.dtype}):
        raise ConfigError(
            "inputs",
            f"shapes {sorted(shapes)}, dtypes {sorted(map(str, dtypes))}",
            f"1-D vectors of one length and dtype {config.dtype}",
        )

    signing_keys, directory = trusted_setup(ids)  # before the session: not timed
    net = _Network(ids, record_transcript)
    started = time.thread_time()
    clients = {
        u: SecAggClient(u, config, signing_key=signing_keys[u], directory=directory)
        for u in ids
        if u not in plan.advertise_keys
    }
    net.client_seconds += time.thread_time() - started  # key generation
    server = SecAggServer(config, directory=directory)
    up = {u: net.up(u, clients[u].advertise_keys) for u in clients}
    down = net.down(server.collect_keys, up)
    up = {
        u: net.up(u, clients[u].share_keys, m) for u, m in down.items() if u not in plan.share_keys
    }
    down = net.down(server.relay_shares, up)
    up = {
        u: net.up(u, clients[u].masked_input, m, vectors[u])
        for u, m in down.items()
        if u not in plan.masked_input
    }
    down = net.down(server.collect_masked_inputs, up)
    survivors = sorted(down)
    up = {
        u: net.up(u, clients[u].consistency_check, m)
        for u, m in down.items()
        if u not in plan.consistency_check
    }
    down = net.down(server.collect_signatures, up)
    up = {u: net.up(u, clients[u].unmask, m) for u, m in down.items() if u not in plan.unmasking}
    total = net.down(server.unmask, up)
    return SecureSumOutcome(
        total=total,
        survivors=survivors,
        dropped=server.dropped,
        rejected=server.rejected,
        bytes_sent=net.sent,
        bytes_received=net.received,
        client_seconds=net.client_seconds,
        server_seconds=net.server_seconds,
        transcript=net.transcript if record_transcript else None,
    )
