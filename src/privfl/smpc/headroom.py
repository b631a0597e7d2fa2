"""Headroom of fixed-point encrypted evaluation: refuse what could overflow, before sharing.

Why
    Secrets live in Z_2^64 with ``f`` fractional bits (:mod:`privfl.smpc.ring`). A linear
    layer multiplies two encodings, so its products x·W are held as z = x·W · 2^(2f)
    before the local SecureML truncation divides them by 2^f. Nothing in the ring notices
    a value that grows too large: if ``|z|`` reaches 2^63 the accumulator wraps and the layer
    computes garbage; well before that, truncation fails with probability ``|z| / 2^64`` per
    value (the rate ``ring.py`` documents and ``tests/smpc`` measures), and a failed value
    is off by about 2^(64 - f). Both are silent: weights scaled by 1e5 turn an accuracy of
    0.92 into 0.06. This module bounds every such value from public information and the
    checking party's own secret, and refuses with the layer, the value and the fix.

The bound: interval bound propagation
    For inputs in a box (every ``|x_j| <= R``, R the public ``input_bound``), propagate an
    interval [l, u] per value through the layers (interval arithmetic, Moore 1966; as
    used for neural networks by Gowal et al., "On the Effectiveness of Interval Bound
    Propagation for Training Verifiably Robust Models", arXiv:1810.12715, 2018):

    - Linear and Conv2d (both linear maps x -> x·W): with W+ = max(W, 0) and
      W- = min(W, 0), x·W lies in [l·W+ + u·W-, u·W+ + l·W-]. This is never looser than
      the L1 bound ``sum_j |W_ij| · max|x_j|`` and is tighter after a ReLU (l = 0). For a
      convolution the same formula holds with ``conv2d(., W+)``, zero padding included
      (padded values are exactly 0). The bias is added after truncation.
    - ReLU and 2x2 max pooling are monotone: they map the ends of the interval.
    - Flatten reshapes.

    Sound for the ring, not just for the reals: the weights are rounded as the model
    owner encodes them (round(W · 2^f) / 2^f), the bound R as the data owner's inputs are
    (rounding is monotone, so ``|x| <= R`` gives ``|round(x 2^f)| <= round(R 2^f)``), each
    truncation may add one unit in the last place 2^-f, and every float64 sum is padded
    by 1e-9 of the sum of its absolute terms (its rounding error is below n · 2^-53 of
    that, n < 2^20 terms). ``tests/smpc/test_headroom.py`` checks on random models that no
    value ever exceeds its bound.

The limits
    A product bound P (real) is held as P · 2^(2f) in the ring; it must stay at most
    2^(64 - k), k = ``failure_bits`` (default 16): then a truncation fails with
    probability at most 2^-k (1.5e-5) even for a value at its worst case, and real values
    sit below their bounds: for the 2NN trained 20 rounds on MNIST and R = 4, the bounds
    of its three layers are 78, 302 and 1,962 and the largest products on 2,000 test
    images 10.0, 5.8 and 14.3 (failure probabilities near 2^-28 per value). For f = 16
    the limit is ``|x·W| <= 65,536``, 33 times that 2NN's largest bound. Every value after
    truncation and bias must stay below 2^62 in the ring, where sums and differences of
    two encodings cannot wrap (max pooling and argmax compare through differences). One
    fractional bit fewer lets P grow fourfold.

Who checks what (nothing extra is revealed)
    The input bound R is a public setting of the session. The model owner checks its own
    weights against R (:func:`check_model_headroom`) and needs no input; the data owner
    checks each batch against R (:func:`check_inputs`) and needs no weight. A refusal
    tells the other side only that the refusing owner's own values do not fit a public
    limit. Where R is not set, the data owner announces :func:`announced_input_bound`,
    the smallest power of two >= its largest absolute input, which reveals only that power.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from privfl.errors import ConfigError
from privfl.smpc.ring import RING_BITS
from privfl.smpc.shapes import check_input_shape

DEFAULT_FAILURE_BITS = 16
"""A worst-case value fails its truncation with probability at most 2^-16 (about 1.5e-5)."""

SUM_SLACK = 1e-9
"""Relative padding of every float64 sum, above its rounding error n · 2^-53 for n < 2^20."""

SAFE_VALUE_BITS = RING_BITS - 2
"""Values after truncation stay below 2^62, where sums and differences cannot wrap."""

LOWEST_SUGGESTED_FRAC_BITS = 8
"""The fewest fractional bits the evaluator and ``privfl evaluate-party`` accept."""


@dataclass(frozen=True)
class LayerBound:
    """Worst-case magnitudes, in real units, of one Linear or Conv2d layer of a model.

    :param index: Position of the layer in the ``torch.nn.Sequential``.
    :param kind: ``"Linear"`` or ``"Conv2d"``.
    :param product: Bound on ``|x·W|``, the value truncated (held as product · 2^(2f)).
    :param output: Bound on ``|x·W + b|`` after truncation (held as output · 2^f).
    """

    index: int
    kind: str
    product: float
    output: float


def _encoded(t: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """Real values of the fixed-point encoding of ``t``, as its owner shares them."""
    scale = float(1 << frac_bits)
    return torch.round(t.detach().to(torch.float64) * scale) / scale


LinearMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _linear_map(module: nn.Linear | nn.Conv2d) -> LinearMap:
    """x -> x·W of a Linear or Conv2d layer, for any weight W of the layer's shape."""
    if isinstance(module, nn.Linear):
        return lambda x, w: x @ w.t()
    return lambda x, w: functional.conv2d(x, w, None, module.stride, module.padding)


def _bias(module: nn.Linear | nn.Conv2d, frac_bits: int) -> torch.Tensor | float:
    if module.bias is None:
        return 0.0
    bias = _encoded(module.bias, frac_bits)
    return bias if isinstance(module, nn.Linear) else bias[:, None, None]


def layer_bounds(
    model: nn.Sequential, input_shape: Sequence[int], input_bound: float, frac_bits: int
) -> list[LayerBound]:
    """Worst-case bounds of every Linear and Conv2d layer for inputs with ``|x| <= input_bound``.

    A pure function of the model's encoded weights and public settings (interval bound
    propagation, see the module docstring); ``input_shape`` is the shape of one example.
    """
    check_input_shape(model, input_shape)
    ulp = 2.0**-frac_bits
    reach = float(_encoded(torch.tensor(float(input_bound)), frac_bits))
    high = torch.full((1, *input_shape), reach, dtype=torch.float64)
    low = -high
    bounds: list[LayerBound] = []
    with torch.no_grad():
        for index, module in enumerate(model):
            if isinstance(module, nn.Linear | nn.Conv2d):
                apply = _linear_map(module)
                weight = _encoded(module.weight, frac_bits)
                positive, negative = weight.clamp(min=0), weight.clamp(max=0)
                slack = SUM_SLACK * apply(torch.maximum(low.abs(), high.abs()), weight.abs())
                low, high = (
                    apply(low, positive) + apply(high, negative) - slack,
                    apply(high, positive) + apply(low, negative) + slack,
                )
                product = float(torch.maximum(low.abs(), high.abs()).max())
                bias = _bias(module, frac_bits)
                low, high = low - ulp + bias, high + ulp + bias  # truncation: one ulp either way
                output = float(torch.maximum(low.abs(), high.abs()).max())
                bounds.append(LayerBound(index, type(module).__name__, product, output))
            elif isinstance(module, nn.ReLU):
                low, high = low.clamp(min=0), high.clamp(min=0)
            elif isinstance(module, nn.MaxPool2d):
                low, high = functional.max_pool2d(low, 2), functional.max_pool2d(high, 2)
            elif isinstance(module, nn.Flatten):
                low, high = low.flatten(1), high.flatten(1)
            else:
                raise ConfigError(
                    "layer", type(module).__name__, "Linear, Conv2d, ReLU, MaxPool2d, Flatten"
                )
    return bounds


def _fitting_frac_bits(bound: LayerBound, failure_bits: int) -> int:
    """The most fractional bits with which ``bound`` would fit both limits."""
    by_product = (RING_BITS - failure_bits - math.log2(max(bound.product, 1e-300))) / 2
    by_output = SAFE_VALUE_BITS - math.log2(max(bound.output, 1e-300))
    return math.ceil(min(by_product, by_output)) - 1


def check_model_headroom(
    model: nn.Sequential,
    input_shape: Sequence[int],
    input_bound: float,
    frac_bits: int,
    failure_bits: int = DEFAULT_FAILURE_BITS,
) -> list[LayerBound]:
    """The model owner's check before sharing: every layer fits the ring for ``|x| <= input_bound``.

    Returns the bounds; raises :class:`~privfl.errors.ConfigError` for examples of
    ``input_shape`` the model cannot take (:func:`~privfl.smpc.shapes.check_input_shape`),
    or naming the first layer whose products could exceed 2^(64 - failure_bits) in the
    ring, or whose outputs could reach 2^62, with the value reached, the limit and the fix.
    """
    product_limit = 2.0 ** (RING_BITS - failure_bits - 2 * frac_bits)
    output_limit = 2.0 ** (SAFE_VALUE_BITS - frac_bits)
    bounds = layer_bounds(model, input_shape, input_bound, frac_bits)
    for bound in bounds:
        layer = f"layer {bound.index} ({bound.kind}) of the model"
        if not (math.isfinite(bound.product) and math.isfinite(bound.output)):
            raise ConfigError(f"{layer}, weights", "nan or inf", "finite weights and biases")
        if bound.product <= product_limit and bound.output < output_limit:
            continue
        fitting = min(_fitting_frac_bits(b, failure_bits) for b in bounds)
        fix = (
            "rescale the model (smaller weights, or train it on inputs normalised to the "
            "input bound)"
        )
        if LOWEST_SUGGESTED_FRAC_BITS <= fitting < frac_bits:
            fix += f", or lower frac_bits to {fitting} (coarser rounding)"
        setting = f"for inputs |x| <= {input_bound:g} with frac_bits = {frac_bits}"
        if bound.product > product_limit:
            ring_bits = math.log2(bound.product) + 2 * frac_bits
            raise ConfigError(
                f"{layer}, bound on |x·W|",
                float(f"{bound.product:.3g}"),
                f"at most {product_limit:g} {setting}: the products would be held as "
                f"2^{ring_bits:.1f} in Z_2^64, above 2^{RING_BITS - failure_bits}, where "
                f"truncation fails with probability over 2^-{failure_bits} per value (or "
                f"the ring wraps) and the encrypted results would be silently wrong; {fix}",
            )
        raise ConfigError(
            f"{layer}, bound on |x·W + b|",
            float(f"{bound.output:.3g}"),
            f"below {output_limit:g} {setting}: larger outputs reach 2^{SAFE_VALUE_BITS} in "
            f"Z_2^64, where comparing two of them can wrap; {fix}",
        )
    return bounds


def check_inputs(inputs: torch.Tensor, input_bound: float, first: int = 0) -> None:
    """The data owner's check of one batch before sharing: every ``|x| <= input_bound``.

    ``first`` is the index of the batch's first example, for the message.
    """
    if not bool(torch.isfinite(inputs).all()):
        raise ConfigError("inputs", "nan or inf", "finite values to encode in fixed point")
    if inputs.numel() == 0:
        return
    magnitudes = inputs.detach().abs().reshape(len(inputs), -1).amax(dim=1)
    worst = int(magnitudes.argmax())
    largest = float(magnitudes[worst])
    if largest > input_bound:
        raise ConfigError(
            f"input {first + worst}, largest |x|",
            float(f"{largest:.6g}"),
            f"at most the public input bound {input_bound:g}, against which the model "
            f"owner checked the fixed-point headroom of its layers; normalise the inputs "
            f"as the model was trained on them (for MNIST: images_to_float), or agree on "
            f"an input bound of {announced_input_bound(inputs):g}, which the model must fit",
        )


def announced_input_bound(inputs: torch.Tensor) -> float:
    """The smallest power of two >= the largest absolute value in ``inputs`` (at least 1).

    What a data owner announces when no input bound was agreed: it reveals only this
    power of two, and the model owner checks its headroom against it.
    """
    largest = float(inputs.detach().abs().max()) if inputs.numel() else 0.0
    return 2.0 ** max(0, math.ceil(math.log2(largest))) if largest > 0 else 1.0
