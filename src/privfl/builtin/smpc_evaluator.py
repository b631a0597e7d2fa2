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
    secure_count_correct,
    secure_outputs,
    secure_predict,
    share_labels,
    share_model,
)

REVEAL = ("predictions", "accuracy")


class SMPCEvaluator(Evaluator):
    """Accuracy of the global model computed on secret shares of model and test data.

    :param limit: Evaluate on the first ``limit`` test examples (0: all of them).
    :param batch_size: Test images per secure forward pass.
    :param frac_bits: Fractional bits of the fixed-point encoding.
    :param reveal: ``"predictions"`` opens the predicted labels to the data owner;
        ``"accuracy"`` opens only the number of correct predictions.
    """

    name = "smpc"
    final_only = True

    def __init__(
        self,
        limit: int = 0,
        batch_size: int = 250,
        frac_bits: int = 16,
        reveal: str = "predictions",
    ) -> None:
        if not (isinstance(limit, int) and limit >= 0):
            raise ConfigError("limit", limit, "an integer >= 0 (0: all)")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ConfigError("batch_size", batch_size, "an integer >= 1")
        if not (isinstance(frac_bits, int) and 8 <= frac_bits <= 24):
            raise ConfigError("frac_bits", frac_bits, "an integer from 8 to 24")
        if reveal not in REVEAL:
            raise ConfigError("reveal", reveal, f"one of {', '.join(REVEAL)}")
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
        session = Session(frac_bits=self.frac_bits, keep_opened_values=False)
        shared_model = share_model(session, model)  # the model owner's one-off sharing
        model_bytes = session.traffic.input_bytes
        correct = 0
        offline_s = online_s = 0.0
        with torch.no_grad():
            num_classes = model(inputs[:1]).shape[1]  # the one-hot labels match the logits
        for start in range(0, count, self.batch_size):
            images = session.share_float(inputs[start : start + self.batch_size])
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
        session = Session(frac_bits=self.frac_bits, keep_opened_values=False)
        shared_model = share_model(session, model)
        model_bytes = session.traffic.input_bytes
        batches, offline_s, online_s = [], 0.0, 0.0
        for start in range(0, count, self.batch_size):
            rows = session.share_float(inputs[start : start + self.batch_size])
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


@hookimpl
def privfl_register_evaluators() -> list[type]:
    return [SMPCEvaluator]
