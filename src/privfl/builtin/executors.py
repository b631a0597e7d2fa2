"""Built-in in-process executors: ``serial`` (one client at a time) and ``vectorized``.

Messages are handed over as objects (no encoding), through the same interface as
every other executor, so the same round code drives any transport.

``serial`` trains each client in turn: the reference arithmetic, which every other
executor that trains one client at a time matches bit for bit. ``vectorized`` trains
the clients of a round as one stacked computation (:mod:`privfl.vectorized`), which
for small models costs a fraction of training them in turn, and agrees with
``serial`` to float round-off.

Training small models on small batches is dominated by per-operation overhead,
which extra threads only add to (on a 2-core machine, batch-10 steps of the 2NN run
up to 3x faster on one thread than on two), while convolutions gain from threads.
``threads = 0`` picks by the work: one thread when a training step's forward pass
costs under :data:`~privfl.vectorized.SINGLE_THREAD_FLOPS`, all of torch's threads
otherwise. The choice depends only on the model and batch size, never on timings, so
runs stay reproducible. ``vectorized`` uses the other cores by training parts of its
stack in threads of its own, one per core (see :class:`~privfl.client_runtime.ClientHost`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import torch

from privfl.client_runtime import ClientApp, ClientHost
from privfl.components import Executor
from privfl.errors import ConfigError
from privfl.messages import Failure, Message
from privfl.plugins import hookimpl
from privfl.vectorized import small_steps


def training_threads(app: ClientApp) -> int:
    """Return the torch thread count for the training steps of ``app``'s clients."""
    data = app.data.load(0)
    example = data.examples.inputs[int(data.indices[0])]
    small = small_steps(app.model, example, app.training.batch_size)
    return 1 if small else torch.get_num_threads()


class SerialExecutor(Executor):
    """Runs every client half in turn in the calling process.

    :param threads: torch threads during local training; 0 chooses by the work.
    """

    name = "serial"
    flags = MappingProxyType({"threads": "--threads"})
    stack: ClassVar[bool] = False
    """Whether the clients of a round train stacked (see :class:`ClientHost`)."""
    clients_in_process = True

    def __init__(self, threads: int = 0) -> None:
        if not (isinstance(threads, int) and threads >= 0):
            raise ConfigError("threads", threads, "an integer >= 0 (0 chooses by the work)")
        self.threads = threads
        self._host: ClientHost | None = None
        self._chosen = 0

    def start(self, app: ClientApp) -> None:
        if self._host is None or self._host.app is not app:
            cores = len(os.sched_getaffinity(0))
            self._host = ClientHost(app, stack=self.stack, threads=cores)
            self._chosen = 0

    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        if self._host is None:
            raise RuntimeError(f"{type(self).__name__}.start() was not called")
        if not self._chosen:
            self._chosen = self.threads or training_threads(self._host.app)
        previous = torch.get_num_threads()
        torch.set_num_threads(self._chosen)
        try:
            if self.stack:
                replies = self._host.handle_all(messages)
                for client in replies:
                    self._replied(client)
                return dict(replies)
            return {client: self._reply(client, message) for client, message in messages.items()}
        finally:
            torch.set_num_threads(previous)

    def _reply(self, client: int, message: Message) -> Message:
        assert self._host is not None
        reply = self._host.handle(client, message)
        self._replied(client)
        return reply

    def _replied(self, client: int) -> None:
        if self.on_reply is not None:
            self.on_reply(client)


class VectorizedExecutor(SerialExecutor):
    """Trains the clients of each round as one stacked computation in the calling process.

    Models :mod:`privfl.vectorized` cannot stack train one client at a time, with a
    one-line :class:`~privfl.errors.PerformanceWarning` saying why.

    :param threads: torch threads during local training; 0 chooses by the work.
    """

    name = "vectorized"
    stack = True


@hookimpl
def privfl_register_executors() -> list[type]:
    return [SerialExecutor, VectorizedExecutor]
