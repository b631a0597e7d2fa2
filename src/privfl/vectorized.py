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
The sum of the clients' losses is differentiated once per step; since client ``k``'s
weights enter only client ``k``'s loss, its gradient is the gradient of its own loss.
The arithmetic is the same as serial training's, summed in another order, so the
results agree with serial training to float32 round-off (see :data:`TOLERANCE`), not
bit for bit.

Supported: models built from ``nn.Sequential``, ``nn.Linear``, ``nn.Conv2d`` (zero
padding), ``nn.Flatten``, max and average pooling and element-wise activations,
trained with cross-entropy. :func:`privfl.stacked_layers.unsupported` names what is
not, so callers can fall back to training one client at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from privfl.client import ClientData, LocalTraining, Loss
from privfl.seeding import torch_generator
from privfl.stacked_layers import Activations, compile_layers, per_example_loss, unsupported

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
            x = Activations(inputs.view(active, -1, *inputs.shape[1:]), active, "stacked")
            x = self._forward(x, leaves)
            logits = x.stacked()
            per_example = self.per_example(logits.reshape(-1, logits.shape[-1]), targets)
            per_example = per_example.view(active, -1)
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
        self._updates(blocks, global_params, order, out)
        return mean_losses

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
        self,
        blocks: list[torch.Tensor],
        global_params: torch.Tensor,
        order: list[int],
        updates: torch.Tensor,
    ) -> None:
        """Write the updates ``local - global`` into ``updates`` in the model's layout,
        row ``order[k]`` from block row ``k``, in one pass per parameter."""
        clients = len(order)
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

    def _forward(self, x: Activations, leaves: list[torch.Tensor]) -> Activations:
        position = 0
        for layer, count in self.program:
            x = layer(x, leaves[position : position + count])
            position += count
        return x
