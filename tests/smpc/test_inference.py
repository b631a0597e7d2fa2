"""Secure inference of small MLPs and CNNs: same predictions, nothing else opened.

Tolerance: secure logits differ from float logits only by fixed-point rounding (about
1e-4 here, measured below), so every input whose two largest logits are more than 1e-2
apart must get the same prediction; ties closer than that may flip, which is why the test
also asks that at least 95% of all inputs agree rather than all of them.
"""

import pytest
import torch
from torch import nn

from privfl.smpc import (
    OpeningKind,
    Session,
    reconstruct,
    secure_count_correct,
    secure_forward,
    secure_predict,
    share_labels,
    share_model,
)

MARGIN = 1e-2


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6, 10),
    )


def _images(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def _hidden_activations(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Every intermediate activation of the plaintext forward pass (excluding the logits)."""
    outs = []
    with torch.no_grad():
        for layer in list(model)[:-1]:
            x = layer(x)
            outs.append(x.double())
    return outs


@pytest.mark.parametrize("make_model", [_mlp, _cnn])
def test_secure_predictions_match_plaintext(make_model):
    model, images = make_model(), _images(64)
    session = Session(seed=3)
    shared_model, shared_images = share_model(session, model), session.share_float(images)
    predictions, _ = session.run_two_phase(secure_predict, shared_model, shared_images)
    with torch.no_grad():
        logits = model(images).double()
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > MARGIN
    expected = logits.argmax(dim=1)
    assert torch.equal(predictions[clear], expected[clear])
    assert (predictions == expected).double().mean() >= 0.95


@pytest.mark.parametrize("make_model", [_mlp, _cnn])
def test_secure_logits_within_fixed_point_error(make_model):
    model, images = make_model(), _images(16)
    session = Session(seed=4)
    logits = secure_forward(session, share_model(session, model), session.share_float(images))
    with torch.no_grad():
        expected = model(images).double()
    assert (session.encoder.decode(reconstruct(logits)) - expected).abs().max() < 1e-3


def _leaks(session: Session, activations: list[torch.Tensor]) -> bool:
    """Whether an opening other than the outputs looks like an encoded activation."""
    encoder = session.encoder
    secret = torch.cat([encoder.encode(a).reshape(-1) for a in activations])
    secret = secret[secret.abs() > 2**8]  # values too small to tell apart from chance
    for entry in session.log.entries:
        if entry.kind in (OpeningKind.BIT_MASKED, OpeningKind.OUTPUT):
            continue
        values = entry.values.reshape(-1)
        if (values.abs() < 2**40).double().mean() > 1e-3:
            return True
        if torch.isin(values, secret).any():
            return True
    return False


@pytest.mark.parametrize("make_model", [_mlp, _cnn])
def test_opening_log_holds_only_masked_values_and_predictions(make_model):
    model, images = make_model(), _images(32)
    session = Session(seed=5)
    predictions = secure_predict(session, share_model(session, model), session.share_float(images))
    allowed = {OpeningKind.BEAVER_MASKED, OpeningKind.AND_MASKED, OpeningKind.BIT_MASKED}
    *protocol, last = session.log.entries
    assert {e.kind for e in protocol} <= allowed
    assert last.kind is OpeningKind.OUTPUT
    assert torch.equal(last.values, predictions)
    bits = [e.values.reshape(-1) for e in protocol if e.kind is OpeningKind.BIT_MASKED]
    assert set(torch.cat(bits).unique().tolist()) == {0, 1}  # bit fields, logged bit by bit
    widths = {e.width for e in protocol if e.kind is OpeningKind.BIT_MASKED}
    assert widths == {1, 2, 4, 8, 16, 32}
    assert not _leaks(session, _hidden_activations(model, images))


def test_leak_check_catches_an_opened_activation():
    # Negative control: opening a hidden activation (as a fake "beaver-masked" value) is caught.
    model, images = _mlp(), _images(8)
    session = Session(seed=6)
    shared_model = share_model(session, model)
    hidden = secure_forward(session, shared_model, session.share_float(images))
    session.open(hidden, OpeningKind.BEAVER_MASKED)
    assert _leaks(session, [model(images).detach().double()])


def test_count_correct_reveals_only_the_count():
    model, images = _cnn(), _images(48)
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    labels = predicted.clone()
    labels[::3] = (labels[::3] + 1) % 10  # a third of the labels are wrong
    session = Session(seed=7)
    count = secure_count_correct(
        session,
        share_model(session, model),
        session.share_float(images),
        share_labels(session, labels, 10),
    )
    assert count.shape == ()
    assert count.item() == int((predicted == labels).sum())
    outputs = [e for e in session.log.entries if e.kind is OpeningKind.OUTPUT]
    assert len(outputs) == 1
    assert outputs[0].shape == ()


def test_unsupported_layer_is_rejected():
    from privfl.errors import ConfigError

    with pytest.raises(ConfigError, match="Sigmoid"):
        share_model(Session(seed=8), nn.Sequential(nn.Linear(4, 2), nn.Sigmoid()))
