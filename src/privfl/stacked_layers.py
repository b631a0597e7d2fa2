"""Layers of stacked clients: a model's layers rewritten to act on many clients at once.

Each client's copy of a layer's weights is stacked along a leading client dimension.
A linear layer becomes one ``torch.baddbmm`` over the clients' weight matrices (stored
transposed, ``[clients, in, out]``, so their gradients come out in the layout they are
stored in); a convolution becomes one grouped convolution with a group per client (the
batching rule of ``torch.func.vmap`` for convolutions, written out so that the
activations stay in the layout the next layer wants); pooling and element-wise
activations apply as they are. :func:`compile_layers` rewrites a model, or says why it
cannot; :mod:`privfl.vectorized` trains with the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from privfl.client import Loss
from privfl.tasks import mse_loss, squared_error

ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
)
"""Layers that act on each activation alone, so they apply to stacked clients as is."""

POOLING = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class Activations:
    """A batch of activations of ``clients`` clients, in one of two layouts.

    ``stacked``: ``[clients, batch, *features]``, what batched matmuls take.
    ``channels``: ``[batch, clients * channels, height, width]``, what a grouped
    convolution takes (client ``k``'s channels are the ``k``-th group).
    """

    tensor: torch.Tensor
    clients: int
    layout: str

    def stacked(self) -> torch.Tensor:
        if self.layout == "stacked":
            return self.tensor
        batch, channels, *rest = self.tensor.shape
        return self.tensor.view(batch, self.clients, channels // self.clients, *rest).transpose(
            0, 1
        )

    def channels(self) -> torch.Tensor:
        if self.layout == "channels":
            return self.tensor
        clients, batch, channels, *rest = self.tensor.shape
        return self.tensor.transpose(0, 1).reshape(batch, clients * channels, *rest)


Layer = Callable[[Activations, list[torch.Tensor]], Activations]


def _linear(x: Activations, params: list[torch.Tensor]) -> Activations:
    inputs = x.stacked()
    weight = params[0]  # stored transposed, [clients, in, out] (see StackedTrainer._load)
    if len(params) == 2:
        out = torch.baddbmm(params[1].unsqueeze(1), inputs, weight)
    else:
        out = torch.bmm(inputs, weight)
    return Activations(out, x.clients, "stacked")


def _conv(layer: nn.Conv2d) -> Layer:
    def conv(x: Activations, params: list[torch.Tensor]) -> Activations:
        weight = params[0].reshape(-1, *params[0].shape[2:])  # [clients * out, in / groups, ...]
        bias = params[1].reshape(-1) if len(params) == 2 else None
        out = F.conv2d(
            x.channels(),
            weight,
            bias,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups * x.clients,
        )
        return Activations(out, x.clients, "channels")

    return conv


def _pool(layer: nn.Module) -> Layer:
    def pool(x: Activations, params: list[torch.Tensor]) -> Activations:
        return Activations(layer(x.channels()), x.clients, "channels")

    return pool


def _elementwise(layer: nn.Module) -> Layer:
    def act(x: Activations, params: list[torch.Tensor]) -> Activations:
        return Activations(layer(x.tensor), x.clients, x.layout)

    return act


def _flatten(x: Activations, params: list[torch.Tensor]) -> Activations:
    inputs = x.stacked()  # contiguous, or batched matmuls on it copy in every pass
    return Activations(inputs.reshape(*inputs.shape[:2], -1).contiguous(), x.clients, "stacked")


def _leaves(model: nn.Module) -> Iterator[nn.Module]:
    """The layers of ``model``, nested ``nn.Sequential`` containers flattened in order."""
    if _is_sequential(model):
        for module in model.children():
            yield from _leaves(module)
    else:
        yield model


def _is_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def compile_layers(model: nn.Module) -> list[tuple[Layer, int]] | str:
    """Return (batched layer, parameter count) per layer of ``model``, or why it cannot be.

    Layers are matched by exact type, so a subclass with its own ``forward`` is not
    taken for its base; hooks and parametrizations, which the stacked forward pass
    would skip, make a model unsupported.
    """
    if not _is_sequential(model) and type(model) is not nn.Linear:
        return f"a {type(model).__name__} that is not an nn.Sequential of layers"
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            return f"hooks on a {type(module).__name__} layer"
        if parametrize.is_parametrized(module):
            return f"a parametrized {type(module).__name__} layer"
    program: list[tuple[Layer, int]] = []
    for module in _leaves(model):
        kind = type(module)
        count = len(list(module.parameters()))
        if kind is nn.Linear:
            program.append((_linear, count))
        elif kind is nn.Conv2d:
            assert isinstance(module, nn.Conv2d)
            if module.padding_mode != "zeros":
                return f"Conv2d with padding_mode={module.padding_mode!r}"
            program.append((_conv(module), count))
        elif kind in POOLING:
            program.append((_pool(module), 0))
        elif kind in ELEMENTWISE:
            program.append((_elementwise(module), 0))
        elif kind is nn.Flatten:
            assert isinstance(module, nn.Flatten)
            if (module.start_dim, module.end_dim) != (1, -1):
                return "Flatten other than Flatten(1, -1)"
            program.append((_flatten, 0))
        else:
            return f"a {kind.__name__} layer"
        if count and any(p.dtype != torch.float32 for p in module.parameters()):
            return f"a {kind.__name__} layer whose parameters are not float32"
    if sum(count for _, count in program) != len(list(model.parameters())):
        return "parameters outside its layers"
    return program


def perceptron_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The linear layers of ``model`` if it is a perceptron, ``[Flatten] Linear (ReLU
    Linear)*`` (the 2NN is one), which :class:`privfl.stacked_mlp.StackedMLP` trains
    without autograd; None for any other model."""
    if isinstance(compile_layers(model), str):
        return None
    layers = list(_leaves(model))
    if layers and type(layers[0]) is nn.Flatten:  # compile_layers checked it is Flatten(1, -1)
        layers = layers[1:]
    linears, activations = layers[0::2], layers[1::2]
    if len(layers) % 2 == 0 or any(type(m) is not nn.ReLU for m in activations):
        return None
    if any(type(m) is not nn.Linear for m in linears):
        return None
    return [m for m in linears if isinstance(m, nn.Linear)]


def flattens_first(model: nn.Module) -> bool:
    """Whether ``model``'s first layer is ``nn.Flatten``."""
    return type(next(_leaves(model))) is nn.Flatten


def is_cross_entropy(loss: Loss) -> bool:
    """Whether ``loss`` is cross-entropy with its default settings."""
    if loss is F.cross_entropy:
        return True
    defaults = nn.CrossEntropyLoss()
    return (
        type(loss) is nn.CrossEntropyLoss
        and loss.weight is None
        and loss.reduction == "mean"
        and loss.ignore_index == defaults.ignore_index
        and loss.label_smoothing == 0.0
    )


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def per_example_loss(loss: Loss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The per-example form of ``loss`` (``[n, outputs]``, ``[n]`` -> ``[n]``), whose mean
    is ``loss``; None for a loss that stacked training does not know: cross-entropy
    and privfl's mean squared error (:func:`privfl.tasks.mse_loss`)."""
    if is_cross_entropy(loss):
        return _cross_entropy
    if loss is mse_loss:
        return squared_error
    return None


def unsupported(model: nn.Module, loss: Loss) -> str | None:
    """Why ``model`` trained with ``loss`` cannot be trained stacked, or None if it can."""
    program = compile_layers(model)
    if isinstance(program, str):
        return f"the model has {program}"
    if per_example_loss(loss) is None:
        return "the loss is neither cross-entropy nor privfl.tasks.mse_loss"
    return None
