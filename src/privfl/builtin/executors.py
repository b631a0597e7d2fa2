"""Built-in executor: clients one after another in this process.

Local training of small models on small batches is dominated by per-operation
overhead, which extra threads only add to (on a 2-core machine, batch-10 steps of
the 2NN run up to 3x faster on one thread than on two), while convolutions gain from
threads. ``threads = 0`` picks by the work: one thread when a training batch's
forward pass costs under :data:`SINGLE_THREAD_FLOPS`, all of torch's threads
otherwise. The choice depends only on the model and batch size, never on timings, so
runs stay reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from privfl.client import ClientWork
from privfl.components import Executor
from privfl.errors import ConfigError
from privfl.plugins import hookimpl
from privfl.records import ClientResult, ClientTask

SINGLE_THREAD_FLOPS = 20_000_000
"""Forward FLOPs per training batch below which local training runs on one thread."""


def training_threads(work: ClientWork) -> int:
    """Return the thread count for ``work``'s local training (see the module docstring)."""
    batch = work.train.inputs[: work.training.batch_size]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        work.model(batch)
    return 1 if counter.get_total_flops() < SINGLE_THREAD_FLOPS else torch.get_num_threads()


class SerialExecutor(Executor):
    """Runs every client in turn in the calling process.

    :param threads: torch threads during local training; 0 chooses by the work.
    """

    name = "serial"
    config_keys = ("threads",)

    def __init__(self, threads: int = 0) -> None:
        if not (isinstance(threads, int) and threads >= 0):
            raise ConfigError("threads", threads, "an integer >= 0 (0 chooses by the work)")
        self.threads = threads
        self._chosen: dict[int, int] = {}

    def run(
        self, work: ClientWork, tasks: Sequence[ClientTask], global_params: torch.Tensor
    ) -> list[ClientResult]:
        threads = self.threads or self._chosen.setdefault(id(work), training_threads(work))
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [work(task, global_params) for task in tasks]
        finally:
            torch.set_num_threads(previous)


@hookimpl
def privfl_register_executors() -> list[type]:
    return [SerialExecutor]
