"""Local training: the arithmetic a client half runs on its own data.

:class:`LocalTrainer` trains one client at a time from the global parameters and
returns ``local - global``. Speed by design: simulated clients hold index arrays into
one dataset tensor (:class:`ClientData`, no per-client DataLoader or copy); the model's
parameters and their gradients are views into two flat float32 vectors
(:func:`flatten_parameters`, :func:`flatten_gradients`), so loading the global model is
one copy, clearing the gradients one fill, an SGD step one fused multiply-add, and
reading the result one subtraction. One trainer (one model copy) serves every client
of a process, so 10,000 simulated clients cost no more models than 10.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from privfl.components import TensorPair
from privfl.errors import ConfigError
from privfl.seeding import torch_generator

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class LocalTraining:
    """Settings of local training: epochs over the client's data, batch size, step size.

    ``proximal_mu > 0`` adds FedProx's proximal term ``mu / 2 * ||w - w_global||^2`` to
    each client's objective (Li et al. 2020, "Federated Optimization in Heterogeneous
    Networks", MLSys), which keeps local models near the global one on non-IID data.
    """

    epochs: int = 1
    batch_size: int = 10
    lr: float = 0.1
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ConfigError("epochs", self.epochs, "an integer >= 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError("batch_size", self.batch_size, "an integer >= 1")
        # Steps are float32: a step size float32 cannot hold would overflow in the first step.
        if not (math.isfinite(self.lr) and 0 < self.lr <= FLOAT32_MAX):
            raise ConfigError("lr", self.lr, "a finite number > 0 (at most 3.4e38, float32)")
        if not (math.isfinite(self.proximal_mu) and 0 <= self.proximal_mu <= FLOAT32_MAX):
            raise ConfigError(
                "proximal_mu", self.proximal_mu, "a finite number >= 0 (at most 3.4e38, float32)"
            )


def flatten_parameters(model: torch.nn.Module) -> torch.Tensor:
    """Make ``model``'s parameters views into one new flat float32 vector; return it.

    Writing to the vector changes the model and in-place optimizer steps on the
    parameters change the vector, so the flat form costs no copies per step.

    :raises ConfigError: for parameters that are not float32, or floating-point
        buffers (such as BatchNorm statistics), which would not travel with updates.
    """
    params = list(model.parameters())
    if any(p.dtype != torch.float32 for p in params):
        raise ConfigError("model", type(model).__name__, "a model whose parameters are float32")
    if any(b.is_floating_point() for b in model.buffers()):
        raise ConfigError(
            "model",
            type(model).__name__,
            "a model without floating-point buffers (BatchNorm statistics do not travel "
            "with updates; use GroupNorm or LayerNorm)",
        )
    flat = torch.cat([p.detach().reshape(-1) for p in params]) if params else torch.empty(0)
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def flatten_gradients(model: torch.nn.Module) -> torch.Tensor:
    """Give ``model``'s parameters gradients that are views into one zero vector; return it.

    Autograd accumulates into an existing ``.grad`` in place when nothing else holds
    it, so after ``backward()`` the vector holds the whole gradient.
    :meth:`LocalTrainer.train` checks that this held, since an out-of-place
    accumulation would leave the vector silently stale.
    """
    params = list(model.parameters())
    flat = torch.zeros(sum(p.numel() for p in params))
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


@dataclass(frozen=True)
class ClientData:
    """One data owner's training examples: rows ``indices`` of ``examples``.

    A simulated client's data is its index array into the federation's one dataset
    tensor (no copy); a real data owner's is its own tensors with all rows selected.
    Training reads batches the same way in both cases, so both give the same bytes.
    """

    examples: TensorPair
    indices: torch.Tensor

    @classmethod
    def owned(cls, examples: TensorPair) -> ClientData:
        """Data a client holds on its own: every row of ``examples``."""
        return cls(examples, torch.arange(len(examples)))

    def __len__(self) -> int:
        return len(self.indices)


class LocalTrainer:
    """Local training on flat vectors: one model copy serves every client of a process.

    :param model: A module of the federation's architecture; a private copy is kept.
    :param loss: Maps (outputs, targets) to a scalar mean loss.
    :param training: Local-training settings.
    """

    def __init__(self, model: torch.nn.Module, loss: Loss, training: LocalTraining) -> None:
        self.model = copy.deepcopy(model)
        self.flat = flatten_parameters(self.model)
        self.flat_grad = flatten_gradients(self.model)
        self._grad_pointers = self._gradient_pointers()
        self.loss = loss
        self.training = training

    def train(
        self,
        data: ClientData,
        global_params: torch.Tensor,
        *,
        seed: int,
        poison: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, float]:
        """Train from ``global_params`` on ``data``; return ``(local - global, mean loss)``.

        :param seed: The client's seed for the round; the batch order comes from it.
        :param poison: Replaces each batch's targets (a simulated label attack).
        """
        generator = torch_generator(seed, "shuffle")
        self.flat.copy_(global_params)
        self.model.train()
        losses: list[torch.Tensor] = []
        size, lr, mu = self.training.batch_size, self.training.lr, self.training.proximal_mu
        inputs_all, targets_all = data.examples.inputs, data.examples.targets
        for _ in range(self.training.epochs):
            order = data.indices[torch.randperm(len(data.indices), generator=generator)]
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                inputs = inputs_all.index_select(0, batch)
                targets = targets_all.index_select(0, batch)
                if poison is not None:
                    targets = poison(targets)
                self.flat_grad.zero_()
                loss = self.loss(self.model(inputs), targets)
                loss.backward()
                if mu:  # FedProx: the gradient of mu / 2 * ||w - w_global||^2
                    self.flat_grad.add_(self.flat - global_params, alpha=mu)
                self.flat.add_(self.flat_grad, alpha=-lr)  # plain SGD on all parameters
                losses.append(loss.detach())
        self._check_gradient_views()
        train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        return self.flat - global_params, train_loss

    def _gradient_pointers(self) -> list[int]:
        return [p.grad.data_ptr() if p.grad is not None else 0 for p in self.model.parameters()]

    def _check_gradient_views(self) -> None:
        if self._gradient_pointers() != self._grad_pointers:
            raise RuntimeError(
                "gradients were not accumulated into the flat gradient vector (was .grad "
                "replaced, e.g. by a hook or zero_grad(set_to_none=True)?); local training "
                "would not have moved the parameters"
            )
