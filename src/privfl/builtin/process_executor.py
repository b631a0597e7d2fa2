"""Built-in executor ``process``: client halves in worker processes, reached by bytes alone.

Each worker process is started once (``spawn``, so it shares no memory with the
server) with the :class:`~privfl.client_runtime.ClientApp`, the client half's
definition, and builds its clients from it: each client loads its own data there
(a simulated client its rows of the dataset, a :class:`~privfl.client_data.FolderData`
client its own file). After that, every message crosses as the bytes of
:func:`privfl.messages.encode` over a pipe, framed by a client id, and every reply
comes back the same way: the server process never holds a client's objects.

A client keeps the worker it got for a round's ``train`` message until the round is
over, since its secure-aggregation state lives there. A worker that dies turns its
clients' replies into ``dropped`` failures (and is restarted for the next round); one
that does not answer within ``timeout`` seconds is stopped and its clients are
``timed out``. Workers run ``threads`` torch threads each (one by default: two
workers on two cores use both, without oversubscribing), and exit when the server's
end of their pipe closes, so a killed server leaves no workers behind.

Workers start with ``spawn``, which imports the main module again in each worker: a
script that builds a federation with this executor must do so under ``if __name__ ==
"__main__":``, as with any use of :mod:`multiprocessing`. Call
:meth:`privfl.Federation.close` (or use the federation in a ``with`` block) to stop
the workers before the process ends.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import time
import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import MappingProxyType
from typing import cast

import torch

from privfl.client_runtime import ClientApp, ClientHost
from privfl.components import Executor
from privfl.errors import ClientError, ConfigError
from privfl.messages import Failure, Message, decode, encode
from privfl.plugins import hookimpl

_FRAME = struct.Struct(">IB")  # client id, status (0: reply, 1: error text)


def _serve(conn: Connection, app: ClientApp, threads: int, stack: bool) -> None:
    """A worker's loop: read a batch of framed messages, answer them, until the pipe closes."""
    torch.set_num_threads(threads)
    host = ClientHost(app, stack=stack)
    while True:
        try:
            (count,) = struct.unpack(">I", conn.recv_bytes())
            batch = [conn.recv_bytes() for _ in range(count)]
        except (EOFError, OSError):
            return
        clients = [_FRAME.unpack_from(frame)[0] for frame in batch]
        try:
            messages = {
                client: decode(frame[_FRAME.size :], sender="the server")
                for client, frame in zip(clients, batch, strict=True)
            }
            replies = [_FRAME.pack(c, 0) + encode(m) for c, m in host.handle_all(messages).items()]
        except Exception:  # sent back whole: the server raises it as a ClientError
            error = traceback.format_exc().encode()
            replies = [_FRAME.pack(client, 1) + error for client in clients]
        for reply in replies:
            conn.send_bytes(reply)


class ProcessExecutor(Executor):
    """Runs client halves in worker processes; only message bytes cross.

    :param workers: Worker processes; 0 uses one per available core.
    :param threads: torch threads for local training in each worker.
    :param vectorize: Train each worker's clients of a round stacked
        (:mod:`privfl.vectorized`): faster for small models, equal to one-at-a-time
        training to float round-off rather than bit for bit.
    :param timeout: Seconds to wait for a worker's replies before its clients count
        as timed out.
    """

    name = "process"
    flags = MappingProxyType(
        {"threads": "--threads", "workers": "--workers", "vectorize": "--vectorize"}
    )

    def __init__(
        self, workers: int = 0, threads: int = 1, vectorize: bool = False, timeout: float = 600.0
    ) -> None:
        if not (isinstance(workers, int) and workers >= 0):
            raise ConfigError("workers", workers, "an integer >= 0 (0: one per core)")
        if not (isinstance(threads, int) and threads >= 0):
            raise ConfigError("threads", threads, "an integer >= 0 (0: one)")
        if not timeout > 0:
            raise ConfigError("timeout", timeout, "a number of seconds > 0")
        self.workers = workers or len(os.sched_getaffinity(0))
        self.threads = threads or 1
        self.vectorize = bool(vectorize)
        self.timeout = float(timeout)
        self._app: ClientApp | None = None
        self._pool: list[tuple[BaseProcess, Connection] | None] = []
        self._assigned: dict[int, int] = {}  # client -> worker, for the current round
        self._lost: set[int] = set()  # clients whose worker died this round

    def start(self, app: ClientApp) -> None:
        if self._app is not app:
            self.close()
            self._app = app
            self._pool = [None] * self.workers

    def _worker(self, index: int) -> Connection:
        entry = self._pool[index]
        if entry is None or not entry[0].is_alive():
            if self._app is None:
                raise RuntimeError("ProcessExecutor.start() was not called")
            context = multiprocessing.get_context("spawn")
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(theirs, self._app, self.threads, self.vectorize), daemon=True
            )
            process.start()
            theirs.close()
            entry = (process, ours)
            self._pool[index] = entry
        return entry[1]

    def _stop(self, index: int) -> None:
        self._lost |= {c for c, worker in self._assigned.items() if worker == index}
        entry = self._pool[index]
        if entry is not None:
            process, conn = entry
            conn.close()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
            self._pool[index] = None

    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        batches: dict[int, list[int]] = {}
        replies: dict[int, Message | Failure] = {}
        for position, client in enumerate(sorted(messages)):
            if messages[client].kind == "train":  # a new round: spread clients evenly
                self._assigned[client] = position % self.workers
                self._lost.discard(client)
            elif client in self._lost:  # its state died with its worker
                replies[client] = Failure("dropped")
                continue
            batches.setdefault(self._assigned.get(client, client % self.workers), []).append(client)
        pending: dict[Connection, tuple[int, set[int]]] = {}
        for index, clients in batches.items():
            try:
                conn = self._worker(index)
                conn.send_bytes(struct.pack(">I", len(clients)))
                for client in clients:
                    conn.send_bytes(_FRAME.pack(client, 0) + encode(messages[client]))
                pending[conn] = (index, set(clients))
            except (BrokenPipeError, EOFError, OSError):
                self._stop(index)
                replies.update(dict.fromkeys(clients, Failure("dropped")))
        replies.update(self._collect(pending))
        return {client: replies[client] for client in messages}

    def _collect(
        self, pending: dict[Connection, tuple[int, set[int]]]
    ) -> dict[int, Message | Failure]:
        """Read replies from every worker as they come (a worker blocks until its last
        reply is read, so reading one worker at a time would serialise them)."""
        replies: dict[int, Message | Failure] = {}
        deadline = time.monotonic() + self.timeout
        while pending:
            ready = cast(
                "list[Connection]", wait(list(pending), timeout=max(deadline - time.monotonic(), 0))
            )
            if not ready:  # the rest timed out: stop those workers
                for index, clients in pending.values():
                    self._stop(index)
                    replies.update(dict.fromkeys(clients, Failure("timed out")))
                break
            for conn in ready:
                index, clients = pending[conn]
                try:
                    frame = conn.recv_bytes()
                except (EOFError, OSError):
                    self._stop(index)
                    replies.update(dict.fromkeys(clients, Failure("dropped")))
                    del pending[conn]
                    continue
                client, status = _FRAME.unpack_from(frame)
                if client not in clients:
                    raise ClientError(f"worker {index} answered for client {client}, not asked")
                body = frame[_FRAME.size :]
                if status:
                    raise ClientError(
                        f"client {client} failed in its worker process:\n{body.decode()}"
                    )
                replies[client] = decode(body, sender=f"client {client}")
                if self.on_reply is not None:
                    self.on_reply(client)
                clients.discard(client)
                if not clients:
                    del pending[conn]
        return replies

    def close(self) -> None:
        for index in range(len(self._pool)):
            self._stop(index)
        self._assigned.clear()
        self._lost.clear()


@hookimpl
def privfl_register_executors() -> list[type]:
    return [ProcessExecutor]
