"""Input shapes a sequential model accepts, checked before an input is shared.

A batch of the wrong shape (32x32 images for an MNIST model, three channels for one, a
flat vector of the wrong length) would otherwise fail deep inside the planning of the
dealer's work with a raw torch error about meta tensors. :func:`check_input_shape` walks
the layers with shape arithmetic only (no tensor is touched) and names the layer that
does not fit, what it takes, what it gets, and the per-example shape the model takes.
It reads plaintext ``torch.nn`` layers (the owners' models) and the shared layers of
:mod:`privfl.smpc.inference` (shapes are public: the dealer learns them anyway).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from privfl.errors import ConfigError

LARGEST_SIDE_TRIED = 1024
"""Square images up to this side are tried to name the shape a convolutional model takes."""


@dataclass(frozen=True)
class Geometry:
    """What one layer needs of the shape of its input (one example, no batch dimension).

    ``inputs`` and ``outputs`` are a Linear layer's features or a Conv2d layer's channels.
    """

    kind: str
    inputs: int = 0
    outputs: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


def geometry(layer: object) -> Geometry:
    """The :class:`Geometry` of a ``torch.nn`` layer or of a shared layer."""
    # Imported here: inference imports this module to check shapes in secure_forward.
    from privfl.smpc import inference

    if isinstance(layer, nn.Module):
        _supported(layer)
    if isinstance(layer, nn.Linear):
        return Geometry("Linear", layer.in_features, layer.out_features)
    if isinstance(layer, inference.SharedLinear):
        features, outputs = layer.weight_t.shape
        return Geometry("Linear", features, outputs)
    if isinstance(layer, nn.Conv2d):
        kernel, stride, padding = (
            _two(value) for value in (layer.kernel_size, layer.stride, layer.padding)
        )
        in_out = (layer.in_channels, layer.out_channels)
        return Geometry("Conv2d", *in_out, kernel, stride, padding)
    if isinstance(layer, inference.SharedConv2d):
        out, channels, kh, kw = layer.weight.shape
        return Geometry("Conv2d", channels, out, (kh, kw), layer.stride, layer.padding)
    if isinstance(layer, nn.MaxPool2d | inference.MaxPool2x2):
        return Geometry("MaxPool2d")
    if isinstance(layer, nn.Flatten | inference.Flatten):
        return Geometry("Flatten")
    if isinstance(layer, nn.ReLU | inference.ReLU):
        return Geometry("ReLU")
    raise ConfigError("layer", type(layer).__name__, "Linear, Conv2d, ReLU, MaxPool2d, Flatten")


def _supported(layer: nn.Module) -> None:
    """Refuse the settings ``share_model`` refuses, before their shapes mislead the walk."""
    if isinstance(layer, nn.Conv2d) and (_two(layer.dilation) != (1, 1) or layer.groups != 1):
        raise ConfigError("Conv2d", layer, "dilation 1 and groups 1")
    if isinstance(layer, nn.MaxPool2d) and (
        {_two(layer.kernel_size), _two(layer.stride or layer.kernel_size)} != {(2, 2)}
        or _two(layer.padding) != (0, 0)
        or _two(layer.dilation) != (1, 1)
        or layer.ceil_mode
    ):
        raise ConfigError("MaxPool2d", layer, "kernel 2, stride 2, no padding")
    if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
        raise ConfigError("Flatten", layer, "start_dim=1 and end_dim=-1")


def _two(value: int | tuple[int, ...] | str) -> tuple[int, int]:
    """A layer's int-or-pair setting as a pair (``share_model`` refuses string paddings)."""
    if isinstance(value, str):
        raise ConfigError("Conv2d.padding", value, "explicit zero padding")
    pair = value if isinstance(value, tuple) else (value, value)
    return (int(pair[0]), int(pair[1]))


def _step(layer: Geometry, shape: tuple[int, ...]) -> tuple[int, ...] | str:
    """The output shape of ``layer`` on ``shape``, or what the layer takes if it does not fit."""
    if layer.kind == "Linear":
        if len(shape) != 1 or shape[0] != layer.inputs:
            return f"{layer.inputs} features"
        return (layer.outputs,)
    if layer.kind == "Conv2d":
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
        if len(shape) != 3 or shape[0] != layer.inputs:
            return f"images (C, H, W) with C = {layer.inputs}"
        height, width = shape[1] + 2 * ph - kh, shape[2] + 2 * pw - kw
        if height < 0 or width < 0:
            return f"images of at least {kh - 2 * ph}x{kw - 2 * pw}"
        return (layer.outputs, height // sh + 1, width // sw + 1)
    if layer.kind == "MaxPool2d":
        if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
            return "images (C, H, W) of at least 2x2"
        return (shape[0], shape[1] // 2, shape[2] // 2)
    if layer.kind == "Flatten":
        return (math.prod(shape),)
    return shape  # ReLU


def _misfit(layers: Sequence[Geometry], shape: tuple[int, ...]) -> tuple[int, str, str] | None:
    """None if ``shape`` fits every layer; else (index, what it takes, what it gets)."""
    for index, layer in enumerate(layers):
        result = _step(layer, shape)
        if isinstance(result, str):
            return index, result, _text(shape)
        shape = result
    return None


def _text(shape: Sequence[int]) -> str:
    return str(tuple(shape))


def expected_input(layers: Sequence[Geometry]) -> str:
    """The per-example input shape the model takes, in words."""
    first = next((layer for layer in layers if layer.kind in ("Linear", "Conv2d", "Flatten")), None)
    if first is None:
        return "any shape"
    if first.kind == "Linear":
        return _text((first.inputs,))
    if first.kind == "Flatten":
        linear = next((layer for layer in layers if layer.kind == "Linear"), None)
        if linear is None:
            return "any shape"
        return f"{linear.inputs} values, e.g. {_text((linear.inputs,))}"
    for side in range(1, LARGEST_SIDE_TRIED + 1):
        candidate = (first.inputs, side, side)
        if _misfit(layers, candidate) is None:
            return _text(candidate)
    return f"images (C, H, W) with C = {first.inputs}"


def check_input_shape(layers: Iterable[object], shape: Sequence[int]) -> None:
    """Raise :class:`~privfl.errors.ConfigError` if inputs of per-example ``shape`` do not
    fit the sequential model ``layers`` (``torch.nn`` or shared layers).

    The message names the layer that does not fit, what it takes and what it gets, and
    the per-example shape the model takes.
    """
    geometries = [geometry(layer) for layer in layers]
    misfit = _misfit(geometries, tuple(int(s) for s in shape))
    if misfit is None:
        return
    index, takes, gets = misfit
    raise ConfigError(
        "input shape (one example)",
        tuple(int(s) for s in shape),
        f"the model takes {expected_input(geometries)}; layer {index} "
        f"({geometries[index].kind}) takes {takes} but gets {gets}. Reshape or resize the "
        f"inputs to the shape the model was trained on",
    )
