"""Learning tasks (classification, regression): their losses, metrics and defaults.

A :class:`~privfl.Federation` trains for one task. The task decides what a loss and
metrics given by name mean when none are given: cross-entropy and accuracy for
classification (integer class targets), mean squared error with MSE, MAE and R^2
for regression (floating-point targets). The task can be named, or is inferred
from the targets' dtype.

Metrics map (outputs, targets) to one value per example; evaluators call them once
on the whole test set and report the mean, so a metric such as R^2, whose
per-example values use the test set's mean, averages to the right number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from privfl.errors import ConfigError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TASKS = ("classification", "regression")


def _as_targets(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``outputs`` shaped like ``targets`` when they hold as many values (``[n, 1]``
    predictions for ``[n]`` targets), so that no silent broadcast to ``[n, n]`` happens."""
    if outputs.shape != targets.shape and outputs.numel() == targets.numel():
        return outputs.reshape(targets.shape)
    return outputs


def mse_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error; ``[n, 1]`` predictions of ``[n]`` targets are compared row by row."""
    return F.mse_loss(_as_targets(outputs, targets), targets)


def mae_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (L1 loss); shapes as :func:`mse_loss`."""
    return F.l1_loss(_as_targets(outputs, targets), targets)


def huber_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Huber loss with delta 1 (squared error near zero, absolute error beyond)."""
    return F.huber_loss(_as_targets(outputs, targets), targets)


LOSSES: Mapping[str, Loss] = {
    "cross_entropy": F.cross_entropy,
    "mse": mse_loss,
    "mae": mae_loss,
    "huber": huber_loss,
}
"""Losses by name. ``cross_entropy`` is torch's own function, so the vectorized
executor recognises it."""


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example correctness of the arg-max prediction (1.0 or 0.0).

    :raises ConfigError: for floating-point targets (a regression task), where an
        arg-max accuracy would be a meaningless 0.0.
    """
    if targets.is_floating_point():
        raise ConfigError(
            "metrics",
            "accuracy",
            "metrics for the task's targets: these are floating point (regression), "
            "use task='regression' (metrics mse, mae, r2) or integer class labels",
        )
    return (outputs.argmax(dim=1) == targets).float()


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example squared error (mean over output columns); its mean is the MSE."""
    error = (_as_targets(outputs, targets) - targets).square()
    return error.reshape(len(targets), -1).mean(dim=1)


def absolute_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example absolute error (mean over output columns); its mean is the MAE."""
    error = (_as_targets(outputs, targets) - targets).abs()
    return error.reshape(len(targets), -1).mean(dim=1)


def r_squared(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example terms of the coefficient of determination R^2 over these examples.

    ``R^2 = 1 - sum (y - f)^2 / sum (y - mean y)^2``; example ``i`` contributes
    ``1 - (y_i - f_i)^2 / var(y)`` (``var`` with denominator n), so the mean over the
    examples passed in one call is R^2. Constant targets give NaN (R^2 is undefined).
    """
    flat = targets.reshape(len(targets), -1).double()
    variance = (flat - flat.mean(dim=0)).square().mean()
    errors = squared_error(outputs.double(), targets.double())
    return (1 - errors / variance).float()


def task_metrics(task: str) -> dict[str, Metric]:
    """The metrics a task reports when none are given."""
    if task == "regression":
        return {"mse": squared_error, "mae": absolute_error, "r2": r_squared}
    return {"accuracy": accuracy}


def task_loss(task: str) -> Loss:
    """The loss a task trains with when none is given."""
    return mse_loss if task == "regression" else F.cross_entropy


def resolve_loss(loss: Loss | str | None, task: str) -> Loss:
    """Return the loss function for ``loss`` (a name of :data:`LOSSES`, a callable, or
    None for the task's default).

    :raises ConfigError: for an unknown name, naming the choices.
    """
    if loss is None:
        return task_loss(task)
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError("loss", loss, f"one of {', '.join(LOSSES)}, or a callable")
        return LOSSES[loss]
    if not callable(loss):
        raise ConfigError("loss", loss, f"one of {', '.join(LOSSES)}, or a callable")
    return loss


def infer_task(targets: torch.Tensor | None, task: str | None) -> str:
    """Return ``task`` checked against ``targets``, or inferred from their dtype.

    Floating-point targets mean regression, integer ones classification; without
    targets to look at, an unnamed task is classification.

    :raises ConfigError: for an unknown task, or targets of the wrong kind for it.
    """
    if task is not None and task not in TASKS:
        raise ConfigError("task", task, f"one of {', '.join(TASKS)}")
    if targets is None:
        return task or "classification"
    floating = targets.is_floating_point()
    if task is None:
        return "regression" if floating else "classification"
    if task == "classification" and floating:
        raise ConfigError(
            "task",
            task,
            "a task that fits the targets: they are floating point, so use task "
            "'regression', or give integer class labels (targets.long())",
        )
    if task == "regression" and not floating:
        raise ConfigError(
            "task",
            task,
            "a task that fits the targets: they are integers, so use task "
            "'classification', or give float targets (targets.float())",
        )
    return task
