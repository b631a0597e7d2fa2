"""Local training of many clients at once: one batched computation for a round's clients.

Small models on small batches spend most of a step in per-operation overhead, not
arithmetic: a batch-10 step of the 2NN multiplies a 10x784 matrix by a 784x200 one.
:class:`StackedTrainer` trains ``K`` clients together instead, each with its own
copy of the weights stacked along a leading client dimension, so every layer runs as
one batched operation for all of them (a linear layer as ``torch.baddbmm`` over ``K``
weight matrices; a convolution as one grouped convolution with ``K`` groups, the
batching rule of ``torch.func.vmap`` for convolutions, written out so the activations
stay in the layout the next layer wants).

Each client keeps what serial training gives it (:class:`~privfl.client.LocalTrainer`):
its own batch order from its own seed, its own batches (a client's last, shorter
batch is padded with examples of weight zero), the mean loss of each of its own
batches, and its own number of steps (clients are ordered by steps, longest first,
and a step trains only the clients that still have batches, a prefix of the stack).
The sum of the clients' losses is differentiated once per step; since client ``k``'s
weights enter only client ``k``'s loss, its gradient is the gradient of its own loss.
The arithmetic is the same as serial training's, summed in another order, so the
results agree with serial training to float32 round-off (see :data:`TOLERANCE`), not
bit for bit.

Supported: models built from ``nn.Sequential``, ``nn.Linear``, ``nn.Conv2d`` (zero
padding), ``nn.Flatten``, max and average pooling and element-wise activations,
trained with cross-entropy. :func:`unsupported` names what is not, so callers can
fall back to training one client at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from privfl.client import ClientData, LocalTraining, Loss
from privfl.seeding import torch_generator

TOLERANCE = 1e-4
"""Largest difference, relative to the update's largest entry, between a client's
update trained here and trained serially, over the tests' rounds (float32 sums in
another order; observed differences are around 1e-6)."""

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

SINGLE_THREAD_FLOPS = 20_000_000
"""Forward FLOPs per training step below which a step is dominated by per-operation
overhead: it runs fastest on one thread, and stacking clients pays. Above it (the
CNN's batch of 10 costs about 92 million), a step keeps the cores busy on its own,
and clients train one at a time on all threads (measured: the CNN's round stacked
took 1.2x the floor, one at a time 0.7x)."""


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of ``model``'s linear and convolution
    layers on one ``example``, the work that dominates a forward pass.

    Counted from each layer's weight size and output size in one forward pass of the
    example, so it costs one example's forward pass (``FlopCounterMode`` costs
    seconds on its first use).
    """
    total = 0
    layer_types = (nn.Linear, nn.modules.conv._ConvNd)

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        positions = output[0, 0].numel() if isinstance(module, nn.modules.conv._ConvNd) else 1
        total += 2 * weight.numel() * positions

    layers = [m for m in model.modules() if isinstance(m, layer_types)]
    handles = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            model(example.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass
class _Activations:
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


Layer = Callable[[_Activations, list[torch.Tensor]], _Activations]


def _linear(x: _Activations, params: list[torch.Tensor]) -> _Activations:
    inputs = x.stacked()
    weight = params[0]  # stored transposed, [clients, in, out] (see StackedTrainer._load)
    if len(params) == 2:
        out = torch.baddbmm(params[1].unsqueeze(1), inputs, weight)
    else:
        out = torch.bmm(inputs, weight)
    return _Activations(out, x.clients, "stacked")


def _conv(layer: nn.Conv2d) -> Layer:
    def conv(x: _Activations, params: list[torch.Tensor]) -> _Activations:
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
        return _Activations(out, x.clients, "channels")

    return conv


def _pool(layer: nn.Module) -> Layer:
    def pool(x: _Activations, params: list[torch.Tensor]) -> _Activations:
        return _Activations(layer(x.channels()), x.clients, "channels")

    return pool


def _elementwise(layer: nn.Module) -> Layer:
    def act(x: _Activations, params: list[torch.Tensor]) -> _Activations:
        return _Activations(layer(x.tensor), x.clients, x.layout)

    return act


def _flatten(x: _Activations, params: list[torch.Tensor]) -> _Activations:
    inputs = x.stacked()  # contiguous, or batched matmuls on it copy in every pass
    return _Activations(inputs.reshape(*inputs.shape[:2], -1).contiguous(), x.clients, "stacked")


def _leaves(model: nn.Module) -> Iterator[nn.Module]:
    """The layers of ``model``, nested ``nn.Sequential`` containers flattened in order."""
    if _is_sequential(model):
        for module in model.children():
            yield from _leaves(module)
    else:
        yield model


def _is_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _compile(model: nn.Module) -> list[tuple[Layer, int]] | str:
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


def _is_cross_entropy(loss: Loss) -> bool:
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


def unsupported(model: nn.Module, loss: Loss) -> str | None:
    """Why ``model`` trained with ``loss`` cannot be trained stacked, or None if it can."""
    program = _compile(model)
    if isinstance(program, str):
        return f"the model has {program}"
    if not _is_cross_entropy(loss):
        return "the loss is not cross-entropy"
    return None


@dataclass(frozen=True)
class _Schedule:
    """Every client's batches for the whole of local training, padded to one shape.

    ``rows[k, s]`` are the example indices of client ``k``'s step ``s`` (padded with
    its first example), ``weights[k, s]`` 1 for real examples and 0 for padding, and
    ``steps[k]`` the client's number of steps; clients are sorted by steps, longest first.
    """

    rows: torch.Tensor  # [clients, max steps, batch] int64
    weights: torch.Tensor  # [clients, max steps, batch] float32
    steps: list[int]


def _schedule(
    datas: Sequence[ClientData], seeds: Sequence[int], epochs: int, batch: int
) -> _Schedule:
    """Each client's batch order exactly as :meth:`LocalTrainer.train` draws it."""
    per_client = []
    for data, seed in zip(datas, seeds, strict=True):
        generator = torch_generator(seed, "shuffle")
        n = len(data.indices)
        per_batch = math.ceil(n / batch)
        padded = torch.empty(epochs, per_batch * batch, dtype=torch.int64)
        for epoch in range(epochs):
            order = data.indices[torch.randperm(n, generator=generator)]
            padded[epoch, :n] = order
            padded[epoch, n:] = order[0] if n else 0
        mask = torch.zeros(per_batch * batch)
        mask[:n] = 1.0
        per_client.append((padded.view(-1, batch), mask.view(per_batch, batch).repeat(epochs, 1)))
    longest = max(len(rows) for rows, _ in per_client)
    rows = torch.zeros(len(datas), longest, batch, dtype=torch.int64)
    weights = torch.zeros(len(datas), longest, batch)
    for k, (client_rows, client_weights) in enumerate(per_client):
        rows[k, : len(client_rows)] = client_rows
        weights[k, : len(client_weights)] = client_weights
    return _Schedule(rows, weights, [len(r) for r, _ in per_client])


class StackedTrainer:
    """Trains many clients from the same global parameters in one batched computation.

    :param model: A module of a supported architecture (see :func:`unsupported`).
    :param loss: Cross-entropy (``F.cross_entropy`` or a default ``nn.CrossEntropyLoss``).
    :param training: Local-training settings.
    :raises ValueError: if the model or loss is not supported.
    """

    def __init__(self, model: nn.Module, loss: Loss, training: LocalTraining) -> None:
        reason = unsupported(model, loss)
        if reason is not None:
            raise ValueError(f"cannot train stacked: {reason}")
        program = _compile(model)
        assert not isinstance(program, str)
        self.program = program
        self.shapes = [tuple(p.shape) for p in model.parameters()]
        linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        self.transposed = [id(p) in linear_weights for p in model.parameters()]
        self.training = training
        self._buffers: list[torch.Tensor] | None = None

    def train(
        self, datas: Sequence[ClientData], global_params: torch.Tensor, seeds: Sequence[int]
    ) -> tuple[torch.Tensor, list[float]]:
        """Train each client from ``global_params`` on its data with its seed.

        :returns: ``[clients, dim]`` updates ``local - global`` in the order given, and
            each client's mean training loss.
        """
        if any(len(data) == 0 for data in datas):
            raise ValueError("every client needs at least one example to train stacked")
        clients = len(datas)
        schedule = _schedule(datas, seeds, self.training.epochs, self.training.batch_size)
        order = sorted(range(clients), key=lambda k: -schedule.steps[k])
        rows, weights = schedule.rows[order], schedule.weights[order]
        steps = [schedule.steps[k] for k in order]
        counts = weights.sum(dim=2)  # [clients, max steps] examples per batch
        blocks = self._load(global_params, clients)
        lr, mu = self.training.lr, self.training.proximal_mu
        global_blocks = [b[0].clone() for b in blocks] if mu else []
        loss_sums = torch.zeros(clients)
        inputs_all, targets_all = datas[0].examples.inputs, datas[0].examples.targets
        shared = all(d.examples is datas[0].examples for d in datas)
        for step in range(steps[0]):
            active = sum(1 for s in steps if s > step)
            leaves = [b[:active].detach().requires_grad_() for b in blocks]
            if shared:
                picked = rows[:active, step].reshape(-1)
                inputs = inputs_all.index_select(0, picked)
                targets = targets_all.index_select(0, picked)
            else:
                inputs = torch.cat(
                    [
                        datas[order[k]].examples.inputs.index_select(0, rows[k, step])
                        for k in range(active)
                    ]
                )
                targets = torch.cat(
                    [
                        datas[order[k]].examples.targets.index_select(0, rows[k, step])
                        for k in range(active)
                    ]
                )
            x = _Activations(inputs.view(active, -1, *inputs.shape[1:]), active, "stacked")
            x = self._forward(x, leaves)
            logits = x.stacked()
            per_example = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets, reduction="none"
            ).view(active, -1)
            losses = (per_example * weights[:active, step]).sum(dim=1) / counts[:active, step]
            losses.sum().backward()
            grads = [leaf.grad for leaf in leaves]
            assert all(g is not None for g in grads)
            if mu:  # FedProx: the gradient of mu / 2 * ||w - w_global||^2
                torch._foreach_add_(
                    grads,  # type: ignore[arg-type]
                    [b[:active] - g for b, g in zip(blocks, global_blocks, strict=True)],
                    alpha=mu,
                )
            torch._foreach_add_(
                [b[:active] for b in blocks],
                grads,  # type: ignore[arg-type]
                alpha=-lr,
            )
            loss_sums[:active] += losses.detach()
        mean_losses = [0.0] * clients
        for k, total in zip(order, (loss_sums / torch.tensor(steps)).tolist(), strict=True):
            mean_losses[k] = total
        return self._updates(blocks, global_params, order), mean_losses

    def _load(self, global_params: torch.Tensor, clients: int) -> list[torch.Tensor]:
        """Every client's copy of the global parameters, one ``[clients, *shape]`` block each.

        Linear weights are stored transposed (``[clients, in, out]``), so that their
        gradients come out of the batched matmul in the layout they are stored in. The
        blocks are prefixes of buffers kept from round to round (a fresh 80 MB for 100
        clients of the 2NN every round costs more in page faults than in copying).
        """
        if self._buffers is None or len(self._buffers[0]) < clients:
            self._buffers = [
                torch.empty(clients, *(shape[::-1] if transposed else shape))
                for shape, transposed in zip(self.shapes, self.transposed, strict=True)
            ]
        blocks, offset = [], 0
        for buffer, shape, transposed in zip(
            self._buffers, self.shapes, self.transposed, strict=True
        ):
            size = math.prod(shape)
            piece = global_params[offset : offset + size].view(shape)
            block = buffer[:clients]
            block.copy_((piece.t() if transposed else piece).expand_as(block))
            blocks.append(block)
            offset += size
        return blocks

    def _updates(
        self, blocks: list[torch.Tensor], global_params: torch.Tensor, order: list[int]
    ) -> torch.Tensor:
        """The ``[clients, dim]`` updates ``local - global`` in the model's layout, row
        ``order[k]`` from block row ``k``, written in one pass per parameter."""
        clients = len(order)
        updates = torch.empty(clients, global_params.numel())
        index = None if order == sorted(order) else torch.tensor(order)
        offset = 0
        for block, shape, transposed in zip(blocks, self.shapes, self.transposed, strict=True):
            size = math.prod(shape)
            local = block.transpose(1, 2) if transposed else block
            start = global_params[offset : offset + size].view(shape)
            target = updates[:, offset : offset + size].view(clients, *shape)
            if index is None:
                torch.sub(local, start, out=target)
            else:
                target.index_copy_(0, index, local - start)
            offset += size
        return updates

    def _forward(self, x: _Activations, leaves: list[torch.Tensor]) -> _Activations:
        position = 0
        for layer, count in self.program:
            x = layer(x, leaves[position : position + count])
            position += count
        return x
