"""Built-in evaluator ``smpc``: the global model tested on an encrypted test set.

The model owner secret-shares the weights and the data owner secret-shares the test
images between two compute parties; the forward pass runs on the shares with a
trusted dealer's correlated randomness (:mod:`privfl.smpc`), and only the predictions
(``reveal = "predictions"``) or only the number of correct predictions (``reveal =
"accuracy"``, labels shared too) are opened. Nobody sees the other side's inputs.

It is expensive, so it runs only after the last round (``final_only``). Its metrics
carry the prefix ``smpc_``: encrypted accuracy, the plaintext accuracy on the same
images (a reference computed in the clear for comparison only), milliseconds per image
of the offline (dealer) and online phases, and bytes per image that would travel.

A regression model (floating-point test targets) opens only its predictions, to the
data owner, who scores them with the federation's metrics (``smpc_mse``, ...); the
same metrics in the clear (``smpc_plaintext_mse``, ...) and the largest difference
between a secure and a plaintext prediction (``smpc_max_prediction_error``) are
references. Counts and costs are per example (``smpc_examples``, ...). With
predictions off by at most ``d``, the secure MSE is within ``2 d MAE + d^2`` of the
plaintext one (see the SMPC explanation page for ``d``).

Before anything is shared, the model owner checks that no layer can overflow the
fixed-point ring for inputs within the public ``input_bound``, and the data owner checks
each batch's shape and that its inputs stay within that bound
(:mod:`privfl.smpc.headroom`, :mod:`privfl.smpc.shapes`): a model or inputs that would
give silently wrong encrypted results are refused with the layer and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from privfl.builtin.evaluators import score
from privfl.components import Evaluator, Metric, TensorPair
from privfl.errors import ConfigError
from privfl.plugins import hookimpl
from privfl.smpc import (
    Session,
    SharedModel,
    SharedTensor,
    secure_count_correct,
    secure_outputs,
    secure_predict,
    share_labels,
    share_model,
)
from privfl.smpc.headroom import announced_input_bound, check_inputs, check_model_headroom

REVEAL = ("predictions", "accuracy")


class SMPCEvaluator(Evaluator):
    """Accuracy of the global model computed on secret shares of model and test data.

    :param limit: Evaluate on the first ``limit`` test examples (0: all of them).
    :param batch_size: Test images per secure forward pass.
    :param frac_bits: Fractional bits of the fixed-point encoding.
    :param reveal: ``"predictions"`` opens the predicted labels to the data owner;
        ``"accuracy"`` opens only the number of correct predictions.
    :param input_bound: Public bound on the absolute value of every input the data owner
        shares, against which the model owner checks its layers' fixed-point headroom; 0:
        the data owner announces the smallest power of two (at least 1) at or above its
        largest absolute input.
    """

    name = "smpc"
    final_only = True

    def __init__(
        self,
        limit: int = 0,
        batch_size: int = 250,
        frac_bits: int = 16,
        reveal: str = "predictions",
        input_bound: float = 0.0,
    ) -> None:
        if not (isinstance(limit, int) and limit >= 0):
            raise ConfigError("limit", limit, "an integer >= 0 (0: all)")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        if not (isinstance(frac_bits, int) and 8 <= frac_bits <= 24):
            raise ConfigError("frac_bits", frac_bits, "an integer from 8 to 24")
        if reveal not in REVEAL:
            raise ConfigError("reveal", reveal, f"one of {', '.join(REVEAL)}")
        if (
            isinstance(input_bound, bool)
            or not isinstance(input_bound, int | float)
            or not 0 <= input_bound < float("inf")
        ):
            raise ConfigError(
                "input_bound", input_bound, "a finite number >= 0 (0: announced by the data owner)"
            )
        self.input_bound = float(input_bound)
        self.limit = limit
        self.batch_size = batch_size
        self.frac_bits = frac_bits
        self.reveal = reveal
        self.on_progress: Callable[[int, int], None] | None = None
        """Called with (images done, images in all) after each batch, e.g. by the CLI."""

    def evaluate(
        self,
        *,
        model: torch.nn.Module,
        test: TensorPair,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        metrics: Mapping[str, Metric],
    ) -> dict[str, float]:
        if not isinstance(model, torch.nn.Sequential):
            raise ConfigError(
                "evaluator",
                "smpc",
                "a torch.nn.Sequential model of Linear, Conv2d, ReLU, MaxPool2d(2) and "
                f"Flatten layers, not {type(model).__name__}",
            )
        if test.targets.is_floating_point():
            return self._evaluate_regression(model, test, metrics)
        count = min(self.limit or len(test), len(test))
        inputs, targets = test.inputs[:count], test.targets[:count]
        session, shared_model, bound = self._share_model(model, inputs)
        model_bytes = session.traffic.input_bytes
        correct = 0
        offline_s = online_s = 0.0
        with torch.no_grad():
            num_classes = model(inputs[:1]).shape[1]  # the one-hot labels match the logits
        for start in range(0, count, self.batch_size):
            images = self._share_batch(session, inputs, start, bound)
            labels = targets[start : start + self.batch_size]
            if self.reveal == "predictions":
                predictions, times = session.run_two_phase(secure_predict, shared_model, images)
                correct += int((predictions == labels).sum())
            else:
                shared_labels = share_labels(session, labels, num_classes)
                hits, times = session.run_two_phase(
                    secure_count_correct, shared_model, images, shared_labels
                )
                correct += int(hits)
            offline_s += times.offline_s
            online_s += times.online_s
            if self.on_progress is not None:
                self.on_progress(min(start + self.batch_size, count), count)
        with torch.no_grad():
            plaintext_correct = int((model(inputs).argmax(dim=1) == targets).sum())
        traffic = session.traffic
        return {
            "smpc_accuracy": correct / count,
            "smpc_plaintext_accuracy": plaintext_correct / count,
            "smpc_images": count,
            "smpc_offline_ms_per_image": 1e3 * offline_s / count,
            "smpc_online_ms_per_image": 1e3 * online_s / count,
            "smpc_online_bytes_per_image": traffic.online_bytes / count,
            "smpc_offline_bytes_per_image": traffic.offline_bytes / count,
            "smpc_input_bytes_per_image": (traffic.input_bytes - model_bytes) / count,
            "smpc_rounds_per_batch": traffic.rounds / -(-count // self.batch_size),
        }

    def _evaluate_regression(
        self, model: torch.nn.Sequential, test: TensorPair, metrics: Mapping[str, Metric]
    ) -> dict[str, float]:
        """Open only the predictions, to the data owner, who scores them with the
        federation's metrics; the same metrics in the clear are a reference."""
        if self.reveal != "predictions":
            raise ConfigError(
                "reveal",
                self.reveal,
                "predictions for a regression model (the data owner computes the metrics "
                "from the opened predictions)",
            )
        count = min(self.limit or len(test), len(test))
        inputs, targets = test.inputs[:count], test.targets[:count]
        session, shared_model, bound = self._share_model(model, inputs)
        model_bytes = session.traffic.input_bytes
        batches, offline_s, online_s = [], 0.0, 0.0
        for start in range(0, count, self.batch_size):
            rows = self._share_batch(session, inputs, start, bound)
            outputs, times = session.run_two_phase(secure_outputs, shared_model, rows)
            batches.append(outputs)
            offline_s, online_s = offline_s + times.offline_s, online_s + times.online_s
            if self.on_progress is not None:
                self.on_progress(min(start + self.batch_size, count), count)
        secure = torch.cat(batches)
        with torch.no_grad():
            plain = model(inputs).double()
        secure_scores = score(secure, targets.double(), metrics)
        plain_scores = score(plain, targets.double(), metrics)
        traffic = session.traffic
        return {
            **{f"smpc_{name}": value for name, value in secure_scores.items()},
            **{f"smpc_plaintext_{name}": value for name, value in plain_scores.items()},
            "smpc_max_prediction_error": float((secure - plain).abs().max()),
            "smpc_examples": count,
            "smpc_offline_ms_per_example": 1e3 * offline_s / count,
            "smpc_online_ms_per_example": 1e3 * online_s / count,
            "smpc_online_bytes_per_example": traffic.online_bytes / count,
            "smpc_offline_bytes_per_example": traffic.offline_bytes / count,
            "smpc_input_bytes_per_example": (traffic.input_bytes - model_bytes) / count,
        }

    def _share_model(
        self, model: torch.nn.Sequential, inputs: torch.Tensor
    ) -> tuple[Session, SharedModel, float]:
        """Agree on the input bound; the model owner checks its headroom, then shares."""
        bound = self.input_bound or announced_input_bound(inputs)
        check_model_headroom(model, inputs.shape[1:], bound, self.frac_bits)  # shapes too
        session = Session(frac_bits=self.frac_bits, keep_opened_values=False)
        return session, share_model(session, model), bound

    def _share_batch(
        self, session: Session, inputs: torch.Tensor, start: int, bound: float
    ) -> SharedTensor:
        """The data owner checks one batch against the agreed bound, then shares it."""
        batch = inputs[start : start + self.batch_size]
        check_inputs(batch, bound, first=start)
        return session.share_float(batch)


@hookimpl
def privfl_register_evaluators() -> list[type]:
    return [SMPCEvaluator]
