"""Built-in evaluator: plaintext inference on the test set in large batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from privfl.components import Evaluator, Metric, TensorPair
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


class PlaintextEvaluator(Evaluator):
    """Mean loss and metrics of the global model over the whole test set.

    :param batch_size: Test examples per forward pass (the metrics are computed once,
        on the outputs of all of them).
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
        loss_total = 0.0
        batches = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for start in range(0, len(test), self.batch_size):
                inputs = test.inputs[start : start + self.batch_size]
                targets = test.targets[start : start + self.batch_size]
                outputs = model(inputs)
                loss_total += float(loss(outputs, targets)) * len(targets)
                batches.append(outputs)
        model.train(was_training)
        return {"loss": loss_total / len(test), **score(torch.cat(batches), test.targets, metrics)}


def score(
    outputs: torch.Tensor, targets: torch.Tensor, metrics: Mapping[str, Metric]
) -> dict[str, float]:
    """The mean of each metric over the whole test set, each called once on all of it
    (so that metrics that use the test set's mean, such as R^2, are right)."""
    return {
        name: float(metric(outputs, targets).double().mean()) for name, metric in metrics.items()
    }


@hookimpl
def privfl_register_evaluators() -> list[type]:
    return [PlaintextEvaluator]
