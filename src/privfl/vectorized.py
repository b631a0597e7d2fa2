"""Local training of many clients at once: one batched computation for a round's clients.

Small models on small batches spend most of a step in per-operation overhead, not
arithmetic: a batch-10 step of the 2NN multiplies a 10x784 matrix by a 784x200 one.
:class:`StackedTrainer` trains ``K`` clients together instead, each with its own
copy of the weights stacked along a leading client dimension, so every layer runs as
one batched operation for all of them (:mod:`privfl.stacked_layers`).

Each client keeps what serial training gives it (:class:`~privfl.client.LocalTrainer`):
its own batch order from its own seed, its own batches (a client's last, shorter
batch is padded with examples of weight zero), the mean loss of each of its own
batches, and its own number of steps (clients are ordered by steps, longest first,
and a step trains only the clients that still have batches, a prefix of the stack).
Where every client holds less than a batch, batches are only as wide as the largest
client. Perceptrons (``[Flatten] Linear (ReLU Linear)*``, the 2NN) trained with
cross-entropy take hand-written steps that fold each weight gradient into its update
(:mod:`privfl.stacked_mlp`): the first step reads the global parameters that all
clients share, and where one step is all a client takes, its update is written
straight into its row of the result. Other models use autograd: the sum of the
clients' losses is differentiated once per step; since client ``k``'s weights enter
only client ``k``'s loss, its gradient is the gradient of its own loss. Either way the
arithmetic is the same as serial training's, summed in another order, so the results
agree with serial training to float32 round-off (see :data:`TOLERANCE`), not bit for
bit.

Supported: models built from ``nn.Sequential``, ``nn.Linear``, ``nn.Conv2d`` (zero
padding), ``nn.Flatten``, max and average pooling and element-wise activations,
trained with cross-entropy. :func:`privfl.stacked_layers.unsupported` names what is
not, so callers can fall back to training one client at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from privfl.client import ClientData, LocalTraining, Loss
from privfl.seeding import torch_generator
from privfl.stacked_layers import (
    Activations,
    compile_layers,
    flattens_first,
    is_cross_entropy,
    per_example_loss,
    perceptron_layers,
    unsupported,
)
from privfl.stacked_mlp import StackedMLP

TOLERANCE = 1e-4
"""Largest difference, relative to the update's largest entry, between a client's
update trained here and trained serially, over the tests' rounds (float32 sums in
another order; observed differences are around 1e-6)."""

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


def small_steps(model: nn.Module, example: torch.Tensor, batch_size: int) -> bool:
    """Whether a training step of ``batch_size`` examples like ``example`` costs under
    :data:`SINGLE_THREAD_FLOPS`: overhead-bound, so one thread and stacking pay."""
    return forward_flops(model, example) * batch_size < SINGLE_THREAD_FLOPS


@dataclass(frozen=True)
class _Schedule:
    """Every client's batches for the whole of local training, padded to one shape.

    Clients are sorted by their number of steps, longest first (``order[k]`` is the
    client in position ``k``), and the tensors are step-major, so that the clients with
    a batch at a step are a prefix of it: ``rows[s, k]`` are the example indices of
    the step-``s`` batch of the client in position ``k`` (padded with index 0; batches
    are ``min(batch size, largest client)`` wide),
    ``weights[s, k]`` 1 for its real examples and 0 for padding, and ``steps[k]`` that
    client's number of steps.
    """

    rows: torch.Tensor  # [max steps, clients, batch] int64
    weights: torch.Tensor  # [max steps, clients, batch] float32
    order: list[int]
    steps: list[int]


def _schedule(
    datas: Sequence[ClientData], seeds: Sequence[int], epochs: int, batch: int
) -> _Schedule:
    """Each client's batch order exactly as :meth:`LocalTrainer.train` draws it."""
    sizes = [len(data.indices) for data in datas]
    per_epoch = [math.ceil(n / batch) for n in sizes]
    order = sorted(range(len(datas)), key=lambda k: -per_epoch[k])
    steps = [epochs * per_epoch[k] for k in order]
    rows = torch.zeros(len(datas), steps[0] * batch, dtype=torch.int64)
    for position, k in enumerate(order):
        generator = torch_generator(seeds[k], "shuffle")
        n, span, indices = sizes[k], per_epoch[k] * batch, datas[k].indices
        for epoch in range(epochs):
            rows[position, epoch * span : epoch * span + n] = indices[
                torch.randperm(n, generator=generator)
            ]
    # Where every client holds fewer examples than a batch (many small clients), each
    # has one batch an epoch, of all its examples: batches as wide as the largest client
    # hold them all, and the padding a full batch would add costs arithmetic only.
    width = min(batch, max(sizes))
    # An example is real where its place in its epoch is below the client's size.
    step = torch.arange(steps[0]).view(1, -1, 1)
    place = (step % torch.tensor([per_epoch[k] for k in order]).view(-1, 1, 1)) * batch
    place = place + torch.arange(width)
    real = (place < torch.tensor([sizes[k] for k in order]).view(-1, 1, 1)) & (
        step < torch.tensor(steps).view(-1, 1, 1)
    )
    return _Schedule(
        rows.view(len(datas), -1, batch)[:, :, :width].transpose(0, 1).contiguous(),
        real.transpose(0, 1).float().contiguous(),
        order,
        steps,
    )


class StackedTrainer:
    """Trains many clients from the same global parameters in one batched computation.

    :param model: A module of a supported architecture (see
        :func:`~privfl.stacked_layers.unsupported`).
    :param loss: Cross-entropy (``F.cross_entropy`` or a default ``nn.CrossEntropyLoss``)
        or :func:`privfl.tasks.mse_loss`.
    :param training: Local-training settings.
    :raises ValueError: if the model or loss is not supported.
    """

    def __init__(self, model: nn.Module, loss: Loss, training: LocalTraining) -> None:
        reason = unsupported(model, loss)
        if reason is not None:
            raise ValueError(f"cannot train stacked: {reason}")
        program = compile_layers(model)
        assert not isinstance(program, str)
        self.program = program
        per_example = per_example_loss(loss)
        assert per_example is not None
        self.per_example = per_example
        self.shapes = [tuple(p.shape) for p in model.parameters()]
        linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        self.transposed = [id(p) in linear_weights for p in model.parameters()]
        self.training = training
        self._buffers: list[torch.Tensor] | None = None
        linears = perceptron_layers(model) if is_cross_entropy(loss) else None
        self.mlp_layers = (
            None if linears is None else [(m.out_features, m.bias is not None) for m in linears]
        )
        """(width, has a bias) of each linear layer of a perceptron trained with
        cross-entropy, which trains without autograd (:mod:`privfl.stacked_mlp`)."""
        self.flattens = flattens_first(model)
        self._mlp: StackedMLP | None = None

    def train(
        self,
        datas: Sequence[ClientData],
        global_params: torch.Tensor,
        seeds: Sequence[int],
        *,
        out: torch.Tensor,
    ) -> list[float]:
        """Train each client from ``global_params`` on its data with its seed.

        :param out: ``[clients, dim]``, where row ``k`` receives client ``k``'s update
            ``local - global``.
        :returns: Each client's mean training loss, in the order given.
        """
        if any(len(data) == 0 for data in datas):
            raise ValueError("every client needs at least one example to train stacked")
        clients = len(datas)
        schedule = _schedule(datas, seeds, self.training.epochs, self.training.batch_size)
        order, steps, weights = schedule.order, schedule.steps, schedule.weights
        batch = weights.shape[2]
        # Each example's share of its batch's mean loss (zero for padding).
        scale = weights / weights.sum(dim=2, keepdim=True).clamp_min(1.0)
        start = self._shared(global_params)
        mlp = self._mlp_for(datas, clients, batch)
        minus_losses = torch.zeros(steps[0], clients, batch)  # -loss of every example
        batches = self._batches(datas, order, schedule.rows)
        if mlp is not None and steps[0] == 1:  # one step each (so in the order given):
            # the updates are the steps' changes, written straight into ``out``
            inputs, targets = batches(0, clients)
            mlp.step(
                *self._by_layer(start),
                inputs.view(clients, batch, -1),
                targets.view(clients, batch),
                scale[0],
                lr=self.training.lr,
                log_likelihood=minus_losses[0],
                changes=list(zip(*self._by_layer(self._rows(out)), strict=True)),
            )
            return self._mean_losses(minus_losses, scale, order, steps)
        blocks = self._blocks(clients)
        if mlp is None:
            for block, shared in zip(blocks, start, strict=True):
                block.copy_(shared.expand_as(block))
        start_layers = list(zip(*self._by_layer(start), strict=True)) if mlp else []
        active, views = 0, blocks
        for step in range(steps[0]):
            if not active or steps[active - 1] <= step:  # clients out of batches drop out
                active = sum(1 for s in steps if s > step)
                views = [b[:active] for b in blocks]
                layers = self._by_layer(views) if mlp else ([], [])
            inputs, targets = batches(step, active)
            if mlp is not None:
                first = step == 0  # every client starts from the shared global parameters
                mlp.step(
                    *(self._by_layer(start) if first else layers),
                    inputs.view(active, batch, -1),
                    targets.view(active, batch),
                    scale[step, :active],
                    lr=self.training.lr,
                    proximal_mu=self.training.proximal_mu,
                    start=start_layers,
                    log_likelihood=minus_losses[step, :active],
                    into=list(zip(*layers, strict=True)) if first else (),
                )
            else:
                self._autograd_step(
                    views, start, inputs, targets, scale[step, :active], minus_losses[step, :active]
                )
        self._updates(blocks, global_params, order, out)
        return self._mean_losses(minus_losses, scale, order, steps)

    def _mean_losses(
        self, minus_losses: torch.Tensor, scale: torch.Tensor, order: list[int], steps: list[int]
    ) -> list[float]:
        """Each client's mean batch loss, in the order given to :meth:`train`."""
        totals = -(minus_losses * scale).sum(dim=(0, 2)) / torch.tensor(steps)
        mean_losses = [0.0] * len(order)
        for k, total in zip(order, totals.tolist(), strict=True):
            mean_losses[k] = total
        return mean_losses

    def _rows(self, updates: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``updates`` (``[clients, dim]``), one ``[clients, *shape]`` per parameter."""
        views, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            views.append(updates[:, offset : offset + size].view(len(updates), *shape))
            offset += size
        return views

    def _mlp_for(self, datas: Sequence[ClientData], clients: int, batch: int) -> StackedMLP | None:
        """The hand-written perceptron steps if they apply to ``datas``, else None
        (autograd then trains): examples the first layer takes as they are, class-index
        targets."""
        if self.mlp_layers is None:
            return None
        for examples in {id(d.examples): d.examples for d in datas}.values():
            inputs, targets = examples.inputs, examples.targets
            if not (self.flattens or inputs.dim() == 2) or inputs.dtype != torch.float32:
                return None
            if targets.dim() != 1 or targets.dtype != torch.int64:
                return None
        if self._mlp is None or self._mlp.clients * self._mlp.batch < clients * batch:
            self._mlp = StackedMLP([width for width, _ in self.mlp_layers], clients, batch)
        return self._mlp

    def _by_layer(
        self, params: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """``params`` (in the model's order) as the weights and the biases of each layer."""
        assert self.mlp_layers is not None
        weights: list[torch.Tensor] = []
        biases: list[torch.Tensor | None] = []
        position = 0
        for _, biased in self.mlp_layers:
            weights.append(params[position])
            biases.append(params[position + 1] if biased else None)
            position += 2 if biased else 1
        return weights, biases

    def _batches(
        self, datas: Sequence[ClientData], order: list[int], rows: torch.Tensor
    ) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """A function of (step, active clients) that returns the examples and targets of
        that step's batches, client ``order[k]``'s at ``rows[step, k]``, client after client.

        Clients of one dataset have every step's examples gathered at once, one large
        gather instead of one per step."""
        first = datas[0].examples
        if all(d.examples is first for d in datas):
            steps, clients, batch = rows.shape
            picked = rows.reshape(-1)
            inputs = first.inputs.index_select(0, picked).view(steps, clients * batch, -1)
            targets = first.targets.index_select(0, picked)
            targets = targets.view(steps, clients * batch, *targets.shape[1:])
            return lambda step, active: (
                inputs[step, : active * batch].view(active * batch, *first.inputs.shape[1:]),
                targets[step, : active * batch],
            )

        def gather(step: int, active: int) -> tuple[torch.Tensor, torch.Tensor]:
            parts = [(datas[order[k]].examples, rows[step, k]) for k in range(active)]
            return (
                torch.cat([p.inputs.index_select(0, r) for p, r in parts]),
                torch.cat([p.targets.index_select(0, r) for p, r in parts]),
            )

        return gather

    def _autograd_step(
        self,
        blocks: list[torch.Tensor],
        start: list[torch.Tensor],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        scale: torch.Tensor,
        minus_losses: torch.Tensor,
    ) -> None:
        """One SGD step of the stacked ``blocks`` in place, gradients from autograd; writes
        each example's ``-loss`` (before the step) into ``minus_losses``."""
        active = len(scale)
        leaves = [b.detach().requires_grad_() for b in blocks]
        x = Activations(inputs.view(active, -1, *inputs.shape[1:]), active, "stacked")
        x = self._forward(x, leaves)
        logits = x.stacked()
        per_example = self.per_example(logits.reshape(-1, logits.shape[-1]), targets)
        per_example = per_example.view(active, -1)
        (per_example * scale).sum().backward()
        torch.neg(per_example.detach(), out=minus_losses)
        grads = [leaf.grad for leaf in leaves]
        assert all(g is not None for g in grads)
        mu = self.training.proximal_mu
        if mu:  # FedProx: the gradient of mu / 2 * ||w - w_global||^2
            torch._foreach_add_(
                grads,  # type: ignore[arg-type]
                [b - g for b, g in zip(blocks, start, strict=True)],
                alpha=mu,
            )
        torch._foreach_add_(blocks, grads, alpha=-self.training.lr)  # type: ignore[arg-type]

    def _blocks(self, clients: int) -> list[torch.Tensor]:
        """Room for every client's copy of the parameters, one ``[clients, *shape]`` block
        each.

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
        return [buffer[:clients] for buffer in self._buffers]

    def _shared(self, global_params: torch.Tensor) -> list[torch.Tensor]:
        """Views of ``global_params``, one per parameter, in the layout of the blocks."""
        views, offset = [], 0
        for shape, transposed in zip(self.shapes, self.transposed, strict=True):
            size = math.prod(shape)
            piece = global_params[offset : offset + size].view(shape)
            views.append(piece.t() if transposed else piece)
            offset += size
        return views

    def _updates(
        self,
        blocks: list[torch.Tensor],
        global_params: torch.Tensor,
        order: list[int],
        updates: torch.Tensor,
    ) -> None:
        """Write the updates ``local - global`` into ``updates`` in the model's layout,
        row ``order[k]`` from block row ``k``, in one pass per parameter."""
        clients = len(order)
        in_order = order == sorted(order)
        offset = 0
        for block, shape, transposed in zip(blocks, self.shapes, self.transposed, strict=True):
            size = math.prod(shape)
            local = block.transpose(1, 2) if transposed else block
            start = global_params[offset : offset + size].view(shape)
            target = updates[:, offset : offset + size].view(clients, *shape)
            if in_order:
                torch.sub(local, start, out=target)
            else:  # row by row: no [clients, dim] temporary to fault in
                for k, row in enumerate(order):
                    torch.sub(local[k], start, out=target[row])
            offset += size

    def _forward(self, x: Activations, leaves: list[torch.Tensor]) -> Activations:
        position = 0
        for layer, count in self.program:
            x = layer(x, leaves[position : position + count])
            position += count
        return x
