"""The ``ray`` executor: client halves in Ray actors, reached by message bytes alone.

Ray starts worker processes on this machine or on every machine of a cluster, places
long-lived actors on them and moves objects between machines: the transport and
scheduling that no plugin should write again. :meth:`RayExecutor.start` puts the
:class:`~privfl.client_runtime.ClientApp` (the client half's definition) in Ray's
object store once; each actor builds a :class:`~privfl.client_runtime.ClientHost`
from it, and each client then loads its own data where its actor runs. After that
only the bytes of :func:`privfl.messages.encode` travel: one actor call per message,
whose reply comes back as bytes that the server half decodes as soon as it arrives,
so the server never holds a client's objects.

The rules are those of the built-in ``process`` executor. A client keeps the actor it
got for a round's ``train`` message until the round is over, since its
secure-aggregation state lives there. An actor that dies turns its clients' replies
into ``dropped`` failures for the rest of the round, and a new actor takes its place
the next time it is needed; one that does not answer within ``timeout`` seconds is
killed and its clients are ``timed out``. Each actor trains with ``threads`` torch
threads; with ``vectorize`` an actor gets all of its clients' messages of an exchange
in one call and trains its clients of a round stacked (:mod:`privfl.vectorized`), as
the built-in ``process`` executor's workers do with ``--vectorize``. Actors reserve
none of Ray's CPUs, so that several federations in one process never wait for each
other's actors. An executor that serves another federation (another app) keeps its
actors: each swaps its host for one built from the new app, which saves starting a
process and importing torch again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError

from privfl.client_runtime import ClientApp, ClientHost
from privfl.components import Executor
from privfl.errors import ClientError, ConfigError, PrivflError
from privfl.messages import Failure, Message, decode, encode


class ClientActor:
    """What one Ray actor holds: a :class:`ClientHost` for the clients sent to it."""

    def __init__(self, app: ClientApp, threads: int, stack: bool = False) -> None:
        torch.set_num_threads(threads)
        self.stack = stack
        self.host = ClientHost(app, stack=stack)

    def load(self, app: ClientApp) -> None:
        """Serve the clients of another app from now on (a new federation, a warm actor)."""
        self.host = ClientHost(app, stack=self.stack)

    def handle(self, client: int, data: bytes) -> bytes:
        """Return client ``client``'s encoded reply to the encoded message ``data``."""
        try:
            reply = self.host.handle(client, decode(data, sender="the server"))
        except Exception as error:  # Ray re-raises it in the server as a ClientError
            raise ClientError(f"client {client} failed in its Ray actor: {error}") from error
        return encode(reply)

    def handle_all(self, batch: dict[int, bytes]) -> dict[int, bytes]:
        """Each client's encoded reply to its encoded message, answered together (so that
        a stacking host trains the round's clients as one computation)."""
        try:
            messages = {c: decode(data, sender="the server") for c, data in batch.items()}
            replies = self.host.handle_all(messages)
        except Exception as error:  # Ray re-raises it in the server as a ClientError
            raise ClientError(
                f"clients {sorted(batch)} failed in their Ray actor: {error}"
            ) from error
        return {client: encode(reply) for client, reply in replies.items()}


_REMOTE_ACTOR = ray.remote(ClientActor)


class RayExecutor(Executor):
    """Runs client halves in Ray actors, on this machine or a Ray cluster; only bytes cross.

    :param address: The Ray instance: unset starts a private local one for the run
        (or uses the one this process already started with ``ray.init``); ``auto``
        joins the cluster this machine is a node of; ``HOST:6379`` or
        ``ray://HOST:10001`` connects to a cluster's head (``ray://`` needs
        ``privfl-ray[client]``).
    :param actors: Ray actors that host the clients; 0 uses one per ``threads`` CPUs
        that Ray reports.
    :param threads: torch threads for local training in each actor.
    :param vectorize: Send each actor its clients' messages of an exchange in one call
        and train its clients of a round stacked (:mod:`privfl.vectorized`): faster
        for small models, equal to one-at-a-time training to float round-off rather
        than bit for bit.
    :param timeout: Seconds to wait for an actor's replies before its clients count
        as timed out.
    """

    name = "ray"
    flags = MappingProxyType({"threads": "--threads", "vectorize": "--vectorize"})

    def __init__(
        self,
        address: str | None = None,
        actors: int = 0,
        threads: int = 1,
        vectorize: bool = False,
        timeout: float = 600.0,
    ) -> None:
        if not (address is None or (isinstance(address, str) and address.strip())):
            raise ConfigError("address", address, 'unset, "auto", "HOST:PORT" or "ray://HOST:PORT"')
        if not (isinstance(actors, int) and not isinstance(actors, bool) and actors >= 0):
            raise ConfigError(
                "actors", actors, "an integer >= 0 (0: one per `threads` CPUs Ray reports)"
            )
        if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
            raise ConfigError("threads", threads, "an integer >= 1")
        if not isinstance(vectorize, bool):
            raise ConfigError("vectorize", vectorize, "true or false")
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)) or not (
            timeout > 0
        ):
            raise ConfigError("timeout", timeout, "a number of seconds > 0")
        self.address = address
        self.actors = actors
        self.threads = threads
        self.vectorize = vectorize
        self.timeout = float(timeout)
        self._owns_ray = False  # whether close() undoes a ray.init() of ours
        self._app: ClientApp | None = None
        self._app_ref: Any = None  # the app in Ray's object store
        self._pool: list[Any] = []  # actor handles, None where none runs
        self._assigned: dict[int, int] = {}  # client -> actor index, for the current round
        self._lost: set[int] = set()  # clients whose actor died this round

    def start(self, app: ClientApp) -> None:
        if not ray.is_initialized():
            self._release()  # handles from an instance that is gone
            self._connect()
        if self._app is app:
            return
        self._app, self._app_ref = app, ray.put(app)
        self._assigned.clear()
        self._lost.clear()
        if not self._pool:
            self._pool = [None] * self._actor_count()
        # Actors already running (this executor served another federation) stay warm:
        # they swap their host for one of the new app instead of starting again.
        live = {i: actor.load.remote(self._app_ref) for i, actor in enumerate(self._pool) if actor}
        deadline = time.monotonic() + self.timeout
        for index, ref in live.items():
            try:
                ray.get(ref, timeout=max(deadline - time.monotonic(), 0))
            except (RayActorError, GetTimeoutError):
                self._stop(index)  # a new actor takes its place when needed

    def _connect(self) -> None:
        if self.address is None:
            # "local" always starts a new instance, never one a RAY_ADDRESS points to.
            ray.init(
                address="local",
                num_cpus=self.actors * self.threads or None,
                include_dashboard=False,
            )
        else:
            try:
                ray.init(address=self.address)
            except ConnectionError as error:
                cause = str(error.__cause__ or "").strip().splitlines()
                raise PrivflError(
                    f"ray.address = {self.address!r}: {error}"
                    + (f" ({cause[-1]})" if cause else "")
                    + ". Check the address; a cluster with token authentication needs "
                    "RAY_AUTH_MODE=token and its token on this machine (see privfl-ray's README)."
                ) from error
        self._owns_ray = True

    def _actor_count(self) -> int:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        return self.actors or max(cpus // self.threads, 1)

    def _actor(self, index: int) -> Any:
        actor = self._pool[index]
        if actor is None:
            # No CPU reservation: an actor that waited for CPUs held by another
            # federation's actors would only time out; "SPREAD" still places actors on
            # the cluster's nodes in turn.
            actor = _REMOTE_ACTOR.options(num_cpus=0, scheduling_strategy="SPREAD").remote(
                self._app_ref, self.threads, self.vectorize
            )
            self._pool[index] = actor
        return actor

    def _stop(self, index: int) -> None:
        self._lost |= {c for c, actor in self._assigned.items() if actor == index}
        actor = self._pool[index]
        if actor is not None:
            ray.kill(actor, no_restart=True)
            self._pool[index] = None

    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        if self._app_ref is None:
            raise RuntimeError("RayExecutor.start() was not called")
        count = len(self._pool)
        replies: dict[int, Message | Failure] = {}
        batches: dict[int, dict[int, bytes]] = {}  # actor index -> its clients' messages
        for position, client in enumerate(sorted(messages)):
            if messages[client].kind == "train":  # a new round: spread clients evenly
                self._assigned[client] = position % count
                self._lost.discard(client)
            elif client in self._lost:  # its state died with its actor
                replies[client] = Failure("dropped")
                continue
            index = self._assigned.get(client, client % count)
            batches.setdefault(index, {})[client] = encode(messages[client])
        # reply reference -> (actor index, its clients)
        pending: dict[Any, tuple[int, tuple[int, ...]]] = {}
        for index, batch in batches.items():
            if self.vectorize:  # one call per actor: its clients train stacked
                pending[self._actor(index).handle_all.remote(batch)] = (index, tuple(batch))
            else:  # one call per client, so that each reply is taken as soon as it is ready
                for client, data in batch.items():
                    pending[self._actor(index).handle.remote(client, data)] = (index, (client,))
        replies.update(self._collect(pending))
        return {client: replies[client] for client in messages}

    def _collect(
        self, pending: dict[Any, tuple[int, tuple[int, ...]]]
    ) -> dict[int, Message | Failure]:
        """Take the replies as they come, until ``timeout`` seconds have passed."""
        replies: dict[int, Message | Failure] = {}
        deadline = time.monotonic() + self.timeout
        while pending:
            ready, _ = ray.wait(
                list(pending), num_returns=1, timeout=max(deadline - time.monotonic(), 0)
            )
            if not ready:  # the rest timed out: stop their actors
                for index, clients in pending.values():
                    self._stop(index)
                    replies.update((client, Failure("timed out")) for client in clients)
                break
            for reference in ready:
                index, clients = pending.pop(reference)
                try:
                    body = ray.get(reference)
                except RayActorError as error:
                    if error.actor_init_failed:  # a setup error, not a client that went away
                        raise ClientError(
                            f"a Ray actor could not build the client half (are privfl, "
                            f"privfl-ray and the run's plugins installed on every node?): {error}"
                        ) from error
                    self._stop(index)
                    replies.update((client, Failure("dropped")) for client in clients)
                    continue
                bodies = body if isinstance(body, dict) else {clients[0]: body}
                for client in clients:
                    replies[client] = decode(bodies[client], sender=f"client {client}")
                    if self.on_reply is not None:
                        self.on_reply(client)
        return replies

    def _release(self) -> None:
        """Kill the actors and forget the app (Ray itself stays up)."""
        if ray.is_initialized():
            for index in range(len(self._pool)):
                self._stop(index)
        self._pool = []
        self._assigned.clear()
        self._lost.clear()
        self._app, self._app_ref = None, None

    def close(self) -> None:
        """Kill the actors; shut Ray down if :meth:`start` called ``ray.init``."""
        self._release()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
