"""Built-in evaluator: plaintext inference on the test set in large batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from privfl.components import Evaluator, Metric, TensorPair
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


class PlaintextEvaluator(Evaluator):
    """Mean loss and metrics of the global model over the whole test set.

    :param batch_size: Test examples per forward pass.
    :param limit: Evaluate on the first ``limit`` test examples (0: all of them).
    """

    name = "plaintext"

    def __init__(self, batch_size: int = 1000, limit: int = 0) -> None:
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        if not (isinstance(limit, int) and limit >= 0):
            raise ConfigError("limit", limit, "an integer >= 0 (0: all)")
        self.batch_size = batch_size
        self.limit = limit

    def evaluate(
        self,
        *,
        model: torch.nn.Module,
        test: TensorPair,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        metrics: Mapping[str, Metric],
    ) -> dict[str, float]:
        if self.limit:
            test = TensorPair(test.inputs[: self.limit], test.targets[: self.limit])
        totals = {name: 0.0 for name in ("loss", *metrics)}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(test), self.batch_size):
                inputs = test.inputs[start : start + self.batch_size]
                targets = test.targets[start : start + self.batch_size]
                outputs = model(inputs)
                totals["loss"] += float(loss(outputs, targets)) * len(targets)
                for name, metric in metrics.items():
                    totals[name] += float(metric(outputs, targets).sum())
        model.train(was_training)
        return {name: total / len(test) for name, total in totals.items()}


@hookimpl
def privfl_register_evaluators() -> list[type]:
    return [PlaintextEvaluator]
