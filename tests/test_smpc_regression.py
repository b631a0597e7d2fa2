"""Encrypted evaluation of a regression model: only predictions are opened, and the
secure MSE equals the plaintext MSE within the fixed-point error."""

from __future__ import annotations

import pytest
import torch

import privfl
from privfl.algorithms.tabular_models import MLP
from privfl.builtin.datasets import DiabetesSource
from privfl.builtin.smpc_evaluator import SMPCEvaluator
from privfl.smpc import OpeningKind, Session, secure_outputs, share_model
from privfl.tasks import task_metrics


@pytest.fixture(scope="module")
def trained():
    data = DiabetesSource().load()
    torch.manual_seed(0)
    fed = privfl.Federation(
        model=MLP(10, (16,)),
        client_data=data.client_data,
        test=data.test,
        training=privfl.LocalTraining(batch_size=10, lr=0.01),
        sampler="all",
        executor="serial",
        evaluators=["plaintext", "smpc"],
    )
    fed.run(5)
    return fed


def test_secure_mse_equals_plaintext_within_the_fixed_point_bound(trained):
    scores = trained.evaluations["smpc"]
    assert scores["smpc_examples"] == len(trained.test) == 88
    d = scores["smpc_max_prediction_error"]
    assert 0 < d < 1e-3  # rounding of 16 fractional bits, accumulated over two layers
    bound = 2 * d * scores["smpc_plaintext_mae"] + d**2
    assert abs(scores["smpc_mse"] - scores["smpc_plaintext_mse"]) <= bound
    assert scores["smpc_plaintext_mse"] == pytest.approx(trained.evaluations["plaintext"]["mse"])
    assert set(scores) >= {"smpc_mae", "smpc_r2", "smpc_online_ms_per_example"}
    assert not any("image" in key or "accuracy" in key for key in scores)


def test_only_the_predictions_are_opened_as_outputs(trained):
    model = trained.global_model()
    session = Session(frac_bits=16, seed=1)
    rows = trained.test.inputs[:7]
    predictions = secure_outputs(session, share_model(session, model), session.share_float(rows))
    outputs = [e for e in session.log.entries if e.kind is OpeningKind.OUTPUT]
    assert [e.shape for e in outputs] == [(7, 1)]  # one value per row, nothing else
    assert session.log.kinds() <= {
        OpeningKind.OUTPUT,
        OpeningKind.BEAVER_MASKED,
        OpeningKind.AND_MASKED,
        OpeningKind.BIT_MASKED,
    }
    torch.testing.assert_close(predictions.float(), model(rows).detach(), atol=1e-3, rtol=0)


def test_revealing_only_a_count_is_refused_for_regression(trained):
    with pytest.raises(privfl.ConfigError, match="reveal = 'accuracy'"):
        SMPCEvaluator(reveal="accuracy").evaluate(
            model=trained.global_model(),
            test=trained.test,
            loss=trained.loss,
            metrics=task_metrics("regression"),
        )
