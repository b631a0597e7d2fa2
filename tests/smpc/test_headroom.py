"""Fixed-point headroom and input shapes: refused before sharing, with the layer and the fix.

The two cases of issue 14 (weights scaled by 1e5, inputs scaled by 1e4), a model at the
edge of the limit (accepted, same predictions as in the clear), the soundness of the
bound on random models, wrong input shapes, and the command-line paths.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import privfl
from privfl.algorithms.models import CNN, TwoNN
from privfl.builtin.smpc_evaluator import SMPCEvaluator
from privfl.cli.main import main
from privfl.smpc import (
    Session,
    SharedTensor,
    reconstruct,
    secure_forward,
    secure_predict,
    share_model,
)
from privfl.smpc.distributed import shared_predictions
from privfl.smpc.headroom import (
    DEFAULT_FAILURE_BITS,
    announced_input_bound,
    check_inputs,
    check_model_headroom,
    layer_bounds,
)
from privfl.smpc.parties import describe, skeleton
from privfl.smpc.ring import RING_BITS


def _mnist_like(n: int, seed: int = 0) -> torch.Tensor:
    """Images with the range of standardised MNIST pixels, [-0.42, 2.82]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator) * 3.24 - 0.42


def _test_set(n: int = 20, classes: int = 10) -> privfl.TensorPair:
    return privfl.TensorPair(_mnist_like(n), torch.arange(n) % classes)


def _evaluate(model: nn.Sequential, test: privfl.TensorPair, **options) -> dict[str, float]:
    evaluator = SMPCEvaluator(batch_size=20, **options)
    return evaluator.evaluate(model=model, test=test, loss=nn.functional.cross_entropy, metrics={})


def _scaled(model: nn.Sequential, factor: float) -> nn.Sequential:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(factor)
    return model


def _two_nn() -> nn.Sequential:
    torch.manual_seed(0)
    return TwoNN()


def test_weights_scaled_by_1e5_are_refused_naming_the_layer():
    test = _test_set()
    check_model_headroom(_two_nn(), (1, 28, 28), announced_input_bound(test.inputs), 16)
    with pytest.raises(privfl.ConfigError) as refused:
        _evaluate(_scaled(_two_nn(), 1e5), test)
    message = str(refused.value)
    assert "layer 1 (Linear)" in message  # Flatten is layer 0
    assert "2^48" in message  # the limit in the ring: 2^(64 - 16)
    assert "rescale the model" in message


def test_weights_scaled_by_1e5_really_overflow_without_the_check():
    """What the check prevents: the engine itself computes wrong predictions silently."""
    model = _scaled(_two_nn(), 1e5)
    images = _mnist_like(20)
    session = Session(seed=0)
    secure = secure_predict(session, share_model(session, model), session.share_float(images))
    with torch.no_grad():
        plain = model(images).argmax(dim=1)
    assert (secure != plain).sum() >= 5


def test_inputs_scaled_by_1e4_are_refused_by_the_data_owner_under_an_agreed_bound():
    test = _test_set()
    scaled = privfl.TensorPair(test.inputs * 1e4, test.targets)
    with pytest.raises(privfl.ConfigError, match=r"input \d+, largest \|x\| = 2\d{4}") as refused:
        _evaluate(_two_nn(), scaled, input_bound=3)
    assert "public input bound 3" in str(refused.value)
    assert "normalise the inputs" in str(refused.value)


def test_inputs_scaled_by_1e4_are_refused_by_the_model_owner_under_the_announced_bound():
    test = _test_set()
    scaled = privfl.TensorPair(test.inputs * 1e4, test.targets)
    assert announced_input_bound(scaled.inputs) == 32768
    with pytest.raises(privfl.ConfigError, match=r"layer 1 \(Linear\).*\|x\| <= 32768"):
        _evaluate(_two_nn(), scaled)


def _edge_model(fraction: float, frac_bits: int = 16) -> nn.Sequential:
    """A linear classifier whose worst-case product is ``fraction`` of the limit for |x| <= 1."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 4))
    limit = 2.0 ** (RING_BITS - DEFAULT_FAILURE_BITS - 2 * frac_bits)
    with torch.no_grad():
        weight = model[0].weight
        weight.mul_(fraction * limit / weight.abs().sum(dim=1).max())
        model[0].bias.zero_()
    return model


def test_a_model_at_the_edge_is_accepted_and_computes_as_in_the_clear():
    model = _edge_model(0.98)
    (bound,) = check_model_headroom(model, (16,), 1.0, 16)
    assert 0.97 * 65536 < bound.product <= 65536
    generator = torch.Generator().manual_seed(4)
    corners = torch.randint(0, 2, (200, 16), generator=generator) * 2.0 - 1
    inputs = torch.cat([corners, torch.rand(200, 16, generator=generator) * 2 - 1])
    session = Session(seed=1)
    shared_model = share_model(session, model)
    secure = session.encoder.decode(
        reconstruct(secure_forward(session, shared_model, session.share_float(inputs)))
    )
    encoded = [
        torch.round(t.detach().double() * 2**16) / 2**16 for t in (inputs, *model[0].parameters())
    ]
    plain = encoded[0] @ encoded[1].t() + encoded[2]  # the model on its encodings, in float64
    assert float(plain.abs().max()) > 0.5 * 65536  # the corners come near the limit
    assert float((secure - plain).abs().max()) <= 2**-15  # one truncation: one ulp
    predictions = secure_predict(session, shared_model, session.share_float(inputs))
    assert torch.equal(predictions, plain.argmax(dim=1))
    with pytest.raises(privfl.ConfigError, match=r"layer 0 \(Linear\)"):
        check_model_headroom(_edge_model(1.02), (16,), 1.0, 16)


def test_fewer_fractional_bits_are_suggested_when_they_fit():
    with pytest.raises(privfl.ConfigError, match="lower frac_bits to 15"):
        check_model_headroom(_edge_model(1.5), (16,), 1.0, 16)


def test_huge_biases_and_nan_weights_are_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        model[2].bias.fill_(2.0**46)  # beyond what 16 fractional bits can hold below 2^62
    with pytest.raises(privfl.ConfigError, match=r"layer 2 \(Linear\).*\|x·W \+ b\|"):
        check_model_headroom(model, (2,), 1.0, 16)
    with torch.no_grad():
        model[0].weight[0, 0] = math.nan
    with pytest.raises(privfl.ConfigError, match=r"layer 0 \(Linear\).*nan or inf"):
        check_model_headroom(model, (2,), 1.0, 16)


def _random_model(seed: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Convolutional (odd seeds, stride 1 or 2) or fully connected, weights scaled by
    1e-2 to 1e2."""
    torch.manual_seed(seed)
    scale = 10.0 ** (seed % 5 - 2)
    if seed % 2:
        stride = 1 + seed % 4 // 3
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1, stride=stride),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(48 // stride**2, 5),
        )
        return _scaled(model, scale), (2, 8, 8)
    model = nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 9), nn.Linear(9, 3))
    return _scaled(model, scale), (12,)


@pytest.mark.parametrize("seed", range(12))
def test_the_bound_holds_for_every_activation_of_random_models(seed):
    """Property: at every Linear and Conv2d layer, the products x·W and the outputs of the
    encoded model (as the parties compute them, in float64) stay within the bound, for
    random inputs and for corners of the input box, where the bound is reached."""
    model, shape = _random_model(seed)
    frac_bits, input_bound = 8 + seed, 0.5 + seed
    bounds = {b.index: b for b in layer_bounds(model, shape, input_bound, frac_bits)}
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.cat(
        [
            (torch.rand(200, *shape, generator=generator, dtype=torch.float64) * 2 - 1),
            torch.randint(0, 2, (200, *shape), generator=generator).double() * 2 - 1,
        ]
    )
    scale = 2.0**frac_bits
    x = torch.round(inputs * input_bound * scale) / scale
    worst_seen = 0.0
    with torch.no_grad():
        for index, layer in enumerate(model):
            if index in bounds:
                weight = torch.round(layer.weight.double() * scale) / scale
                bias = torch.round(layer.bias.double() * scale) / scale
                if isinstance(layer, nn.Linear):
                    product = x @ weight.t()
                else:
                    product = nn.functional.conv2d(x, weight, None, layer.stride, layer.padding)
                    bias = bias[:, None, None]
                product_seen = float(product.abs().max())
                assert product_seen * scale**2 <= bounds[index].product * scale**2
                x = product + bias
                assert float(x.abs().max()) * scale <= bounds[index].output * scale
                worst_seen = max(worst_seen, product_seen / bounds[index].product)
            else:
                x = layer.double()(x)
    assert worst_seen > 0.2  # the corners come near the bound: it is not vacuous


def test_the_bound_of_one_linear_layer_is_reached_at_a_corner():
    torch.manual_seed(6)
    layer = nn.Linear(10, 3)
    (bound,) = layer_bounds(nn.Sequential(layer), (10,), 2.0, 16)
    weight = torch.round(layer.weight.detach().double() * 2**16) / 2**16
    corner = 2.0 * weight.sign()  # x = R sign(W_i) reaches sum_j |W_ij| R
    assert bound.product == pytest.approx(float((corner * weight).sum(dim=1).max()), rel=1e-8)


def test_trained_sized_models_on_mnist_inputs_pass():
    """Random-weight TwoNN and CNN with standardised MNIST-range inputs fit with room to
    spare (trained ones measured 2,600 and 9,400 against the limit of 65,536)."""
    for model in (TwoNN(), CNN()):
        bounds = check_model_headroom(model, (1, 28, 28), 4.0, 16)
        assert max(b.product for b in bounds) < 65536 / 8


def test_inputs_outside_the_bound_or_not_finite_are_refused():
    check_inputs(torch.tensor([[0.5, -2.0]]), 2.0)
    with pytest.raises(privfl.ConfigError, match=r"input 7, largest \|x\| = 2.5"):
        check_inputs(torch.tensor([[0.5, -2.0], [2.5, 0.0]]), 2.0, first=6)
    with pytest.raises(privfl.ConfigError, match="nan or inf"):
        check_inputs(torch.tensor([[math.nan]]), 2.0)


@pytest.mark.parametrize(
    ("model", "shape", "expected", "received"),
    [
        (TwoNN, (1, 32, 32), "the model takes 784 values", "takes 784 features but gets (1024,)"),
        (TwoNN, (100,), "the model takes 784 values", "gets (100,)"),
        (CNN, (1, 32, 32), "the model takes (1, 28, 28)", "takes 3136 features but gets (4096,)"),
        (CNN, (3, 28, 28), "the model takes (1, 28, 28)", "with C = 1 but gets (3, 28, 28)"),
        (CNN, (784,), "the model takes (1, 28, 28)", "gets (784,)"),
    ],
)
def test_wrong_input_shapes_name_the_expected_and_the_received_shape(
    model, shape, expected, received
):
    test = privfl.TensorPair(torch.zeros(4, *shape), torch.zeros(4, dtype=torch.long))
    with pytest.raises(privfl.ConfigError, match="input shape") as refused:
        _evaluate(model(), test)
    assert expected in str(refused.value)
    assert received in str(refused.value)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.MaxPool2d(3), "kernel 2, stride 2"),
        (nn.Conv2d(1, 1, 3, dilation=2), "dilation 1"),
        (nn.Flatten(0), "start_dim=1"),
        (nn.Tanh(), "Linear, Conv2d, ReLU, MaxPool2d, Flatten"),
    ],
)
def test_layers_the_engine_cannot_run_are_refused_before_their_shapes(layer, message):
    with pytest.raises(privfl.ConfigError, match=message):
        check_model_headroom(nn.Sequential(layer), (1, 8, 8), 1.0, 16)


def test_secure_forward_refuses_a_wrong_shape_before_planning():
    """The check in ``secure_forward`` covers every path, the party processes' included."""
    model = CNN()
    session = Session(seed=0)
    shared_model = share_model(session, model)
    images = session.share_float(torch.zeros(2, 1, 32, 32))
    with pytest.raises(privfl.ConfigError, match=r"takes \(1, 28, 28\)"):
        session.plan(secure_forward, shared_model, images)


def test_party_processes_refuse_a_wrong_shape_when_planning():
    """The data owner and the dealer of ``privfl evaluate-party`` plan on a skeleton of the
    model (shapes from the model owner's description): a wrong batch shape is a clear error
    in each process, not a torch error from a meta kernel."""
    session = Session(seed=0)
    described = skeleton(describe(share_model(session, CNN()).to_meta()))
    images = SharedTensor(torch.empty(2, 4, 3, 28, 28, dtype=torch.int64, device="meta"))
    with pytest.raises(privfl.ConfigError, match=r"with C = 1 but gets \(3, 28, 28\)"):
        Session(seed=1).plan(shared_predictions, described, images)


def test_bad_input_bounds_are_refused():
    for value in (-1.0, math.inf, "4", True):
        with pytest.raises(privfl.ConfigError, match="input_bound"):
            SMPCEvaluator(input_bound=value)


FLAGS = ["--model", "2nn", "--clients", "10", "--sampler", "all", "--rounds", "1"]


@pytest.fixture(scope="module")
def scaled_run(tmp_path_factory) -> Path:
    """A finished run whose saved model was then scaled by 1e5."""
    made = tmp_path_factory.mktemp("made") / "run"
    assert main(["run", *FLAGS, "--run-dir", str(made), "--quiet"]) == 0
    run = made.parent / "scaled"
    shutil.copytree(made, run)
    weights = load_file(run / "model.safetensors")
    save_file({k: v * 1e5 for k, v in weights.items()}, run / "model.safetensors")
    return run


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    return lines[0]


def test_cli_evaluate_smpc_on_a_scaled_model_exits_2_with_one_line(scaled_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(scaled_run), "--backend", "smpc", "--limit", "20"]) == 2
    line = _one_error_line(capsys)
    assert "layer 1 (Linear)" in line
    assert not (scaled_run / "evaluation-smpc.json").exists()


def test_cli_model_owner_party_refuses_a_scaled_model_before_listening(scaled_run, capsys):
    capsys.readouterr()
    argv = ["evaluate-party", "--role", "model-owner", "--address", "127.0.0.1:1"]
    assert main([*argv, "--run-dir", str(scaled_run)]) == 2
    assert "layer 1 (Linear)" in _one_error_line(capsys)
