"""Built-in executor ``serial``: client halves in the server's process, one after another.

Messages are handed over as objects (no encoding), through the same interface as
every other executor, so the same round code drives any transport.

Local training of small models on small batches is dominated by per-operation
overhead, which extra threads only add to (on a 2-core machine, batch-10 steps of
the 2NN run up to 3x faster on one thread than on two), while convolutions gain from
threads. ``threads = 0`` picks by the work: one thread when a training batch's
forward pass costs under :data:`SINGLE_THREAD_FLOPS`, all of torch's threads
otherwise. The choice depends only on the model and batch size, never on timings, so
runs stay reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch.utils.flop_counter import FlopCounterMode

from privfl.client_runtime import ClientApp, ClientHost
from privfl.components import Executor
from privfl.errors import ConfigError
from privfl.messages import Failure, Message
from privfl.plugins import hookimpl

SINGLE_THREAD_FLOPS = 20_000_000
"""Forward FLOPs per training batch below which local training runs on one thread."""


def training_threads(app: ClientApp) -> int:
    """Return the thread count for ``app``'s local training (see the module docstring)."""
    data = app.data.load(0)
    batch = data.examples.inputs.index_select(0, data.indices[: app.training.batch_size])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        app.model(batch)
    return 1 if counter.get_total_flops() < SINGLE_THREAD_FLOPS else torch.get_num_threads()


class SerialExecutor(Executor):
    """Runs every client half in turn in the calling process.

    :param threads: torch threads during local training; 0 chooses by the work.
    """

    name = "serial"
    flags = MappingProxyType({"threads": "--threads"})

    def __init__(self, threads: int = 0) -> None:
        if not (isinstance(threads, int) and threads >= 0):
            raise ConfigError("threads", threads, "an integer >= 0 (0 chooses by the work)")
        self.threads = threads
        self._host: ClientHost | None = None
        self._chosen = 0

    def start(self, app: ClientApp) -> None:
        if self._host is None or self._host.app is not app:
            self._host = ClientHost(app)
            self._chosen = self.threads or training_threads(app)

    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        if self._host is None:
            raise RuntimeError("SerialExecutor.start() was not called")
        previous = torch.get_num_threads()
        torch.set_num_threads(self._chosen)
        try:
            return {client: self._host.handle(client, m) for client, m in messages.items()}
        finally:
            torch.set_num_threads(previous)


@hookimpl
def privfl_register_executors() -> list[type]:
    return [SerialExecutor]
