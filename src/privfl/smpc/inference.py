"""Encrypted evaluation of sequential models: shared weights, shared images, revealed labels.

The model owner shares the weights of a ``torch.nn.Sequential`` built from Linear, Conv2d
(dilation 1, groups 1), ReLU, MaxPool2d(2) and Flatten layers; the data owner shares a
batch of images (and, for :func:`secure_count_correct`, one-hot labels). The forward pass
runs on shares, and only the predicted labels (or only the number of correct ones) are
opened. A ReLU directly followed by a 2x2 max pooling is evaluated as pooling first:
relu(max(a, b)) = max(relu(a), relu(b)) because both are monotone, and four times fewer
values then go through the ReLU.

Typical use, step by step::

    session = Session()                                     # keys from os.urandom
    shared_model = share_model(session, model)              # model owner: encode + share
    shared_images = session.share_float(images)             # data owner: encode + share
    labels, times = session.run_two_phase(secure_predict, shared_model, shared_images)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from privfl.errors import ConfigError
from privfl.smpc import protocols
from privfl.smpc.session import Session
from privfl.smpc.shapes import check_input_shape
from privfl.smpc.shared import SharedTensor
from privfl.smpc.traffic import OpeningKind


@dataclass(frozen=True)
class SharedLinear:
    """y = x @ W^T + b with W^T (IN, OUT) and b (1, OUT) secret-shared."""

    weight_t: SharedTensor
    bias: SharedTensor | None


@dataclass(frozen=True)
class SharedConv2d:
    """2-D convolution with shared weight (OUT, C, KH, KW) and bias (1, OUT, 1, 1)."""

    weight: SharedTensor
    bias: SharedTensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class ReLU:
    """Rectified linear unit on shares."""


@dataclass(frozen=True)
class MaxPool2x2:
    """2x2 max pooling with stride 2."""


@dataclass(frozen=True)
class Flatten:
    """Flatten every dimension after the batch dimension."""


SharedLayer = SharedLinear | SharedConv2d | ReLU | MaxPool2x2 | Flatten


@dataclass(frozen=True)
class SharedModel:
    """The model owner's network with every weight secret-shared."""

    layers: tuple[SharedLayer, ...]

    def to_meta(self) -> SharedModel:
        """Shape-only copy for planning the dealer's work."""
        layers = []
        for layer in self.layers:
            if isinstance(layer, SharedLinear):
                layer = replace(layer, weight_t=layer.weight_t.to_meta(), bias=_meta(layer.bias))
            elif isinstance(layer, SharedConv2d):
                layer = replace(layer, weight=layer.weight.to_meta(), bias=_meta(layer.bias))
            layers.append(layer)
        return SharedModel(tuple(layers))


def _meta(x: SharedTensor | None) -> SharedTensor | None:
    return None if x is None else x.to_meta()


def _pair(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ConfigError(name, value, "an int or a pair of ints")
    return (int(pair[0]), int(pair[1]))


def _share_layer(session: Session, module: nn.Module) -> SharedLayer:
    if isinstance(module, nn.Linear):
        bias = None if module.bias is None else session.share_float(module.bias.detach()[None])
        return SharedLinear(session.share_float(module.weight.detach().t()), bias)
    if isinstance(module, nn.Conv2d):
        if _pair(module.dilation, "dilation") != (1, 1) or module.groups != 1:
            raise ConfigError("Conv2d", module, "dilation 1 and groups 1")
        if not isinstance(module.padding, tuple) or module.padding_mode != "zeros":
            raise ConfigError("Conv2d.padding", module.padding, "explicit zero padding")
        bias = None if module.bias is None else module.bias.detach()[None, :, None, None]
        shared_bias = None if bias is None else session.share_float(bias)
        return SharedConv2d(
            session.share_float(module.weight.detach()),
            shared_bias,
            _pair(module.stride, "stride"),
            _pair(module.padding, "padding"),
        )
    if isinstance(module, nn.ReLU):
        return ReLU()
    if isinstance(module, nn.MaxPool2d):
        settings = (module.kernel_size, module.stride, module.padding, module.dilation)
        if settings not in ((2, 2, 0, 1), ((2, 2), (2, 2), 0, 1)) or module.ceil_mode:
            raise ConfigError("MaxPool2d", module, "kernel 2, stride 2, no padding")
        return MaxPool2x2()
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise ConfigError("Flatten", module, "start_dim=1 and end_dim=-1")
        return Flatten()
    raise ConfigError("layer", type(module).__name__, "Linear, Conv2d, ReLU, MaxPool2d, Flatten")


def share_model(session: Session, model: Iterable[nn.Module]) -> SharedModel:
    """The model owner encodes and shares every layer of a sequential model."""
    with torch.no_grad():
        return SharedModel(tuple(_share_layer(session, module) for module in model))


def secure_forward(session: Session, model: SharedModel, x: SharedTensor) -> SharedTensor:
    """Shared logits of ``model`` on shared inputs ``x``; opens only Beaver-masked values.

    Inputs whose shape does not fit the model are refused with a ``ConfigError`` that
    names the layer and the shape the model takes (before any dealer work is planned).
    """
    layers = list(model.layers)
    check_input_shape(layers, x.shape[1:])
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, SharedLinear):
            x = protocols.matmul(session, x, layer.weight_t)
            x = x if layer.bias is None else x + layer.bias
        elif isinstance(layer, SharedConv2d):
            x = protocols.conv2d(session, x, layer.weight, layer.stride, layer.padding)
            x = x if layer.bias is None else x + layer.bias
        elif isinstance(layer, ReLU):
            if i + 1 < len(layers) and isinstance(layers[i + 1], MaxPool2x2):
                x = protocols.max_pool2d(session, x)
                i += 1
            x = protocols.relu(session, x)
        elif isinstance(layer, MaxPool2x2):
            x = protocols.max_pool2d(session, x)
        else:
            x = x.reshape(x.shape[0], -1)
        i += 1
    return x


def _predicted_index(session: Session, one_hot: SharedTensor) -> SharedTensor:
    classes = torch.arange(one_hot.shape[1], device=one_hot.shares.device)
    return one_hot.mul_public(classes).sum(dim=1)


def secure_predict(session: Session, model: SharedModel, images: SharedTensor) -> torch.Tensor:
    """Predicted class of every image; the predictions are the only output opened."""
    one_hot = protocols.argmax_one_hot(session, secure_forward(session, model, images))
    return session.open(_predicted_index(session, one_hot), OpeningKind.OUTPUT)


def secure_outputs(session: Session, model: SharedModel, inputs: SharedTensor) -> torch.Tensor:
    """The model's outputs on shared inputs (a regression model's predictions), decoded
    to float64; they are the only values opened, to the data owner, who computes the
    metrics against its own targets."""
    opened = session.open(secure_forward(session, model, inputs), OpeningKind.OUTPUT)
    return session.encoder.decode(opened)


def secure_count_correct(
    session: Session, model: SharedModel, images: SharedTensor, labels_one_hot: SharedTensor
) -> torch.Tensor:
    """Number of correct predictions against shared one-hot labels (integer 0/1, (N, K)).

    Only this count is opened: neither the predictions nor the labels are revealed.
    """
    one_hot = protocols.argmax_one_hot(session, secure_forward(session, model, images))
    hits = protocols.beaver_apply(session, protocols.BilinearOp("mul"), one_hot, labels_one_hot)
    return session.open(hits.reshape(-1).sum(dim=0), OpeningKind.OUTPUT)


def share_labels(session: Session, labels: torch.Tensor, num_classes: int) -> SharedTensor:
    """The data owner shares integer labels as one-hot ring elements (0/1, not scaled)."""
    return session.share_ring(torch.nn.functional.one_hot(labels.long(), num_classes))
