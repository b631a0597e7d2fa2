"""Each data owner's local training with Opacus' DP-SGD (Abadi et al. 2016).

Per round and owner: the global model's copy is wrapped for per-sample gradients
(:class:`~opacus.GradSampleModule`), batches are drawn by Poisson sampling, each
example at rate ``q = 1 / ceil(n / batch_size)`` (:class:`~opacus.data_loader.DPDataLoader`),
each per-sample gradient is clipped to L2 norm ``max_grad_norm``, and Gaussian noise of
standard deviation ``noise_multiplier * max_grad_norm`` is added to their sum
(:class:`~opacus.optimizers.DPOptimizer`) before the SGD step. The sampling and the
noise draw from generators seeded by the round's client seed, so a run is
reproducible (and the noise is not from a cryptographically secure generator: this is
a simulation, as Opacus' own ``secure_mode=False``).

An owner's epsilon counts every step it has taken: each round it takes ``epochs *
ceil(n / batch_size)`` steps, and after round ``r`` it has taken ``r`` times that
(an owner the sampler left out of some rounds took fewer, so its true epsilon is
lower than reported). The owner reports it, and what one more round would make it,
as the statistics ``owner_epsilon`` and ``owner_epsilon_next``.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from opacus import GradSampleModule
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from privfl.client import ClientData, LocalTraining, Loss
from privfl.components import Trainer
from privfl.errors import ConfigError
from privfl.seeding import torch_generator
from privfl_opacus.accounting import owner_epsilon


def _positive(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(key, value, "a number > 0")
    if not math.isfinite(value):
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)


class DPSGD(Trainer):
    """Record-level DP: every owner trains with DP-SGD and accounts its own epsilon.

    :param noise_multiplier: Noise standard deviation over the clip norm (sigma).
    :param max_grad_norm: Each example's gradient is clipped to this L2 norm (C).
    :param delta: The delta of each owner's (epsilon, delta) guarantee.
    :param target_epsilon: Stop the run before a round would take an owner's epsilon
        past this; unset: no limit.
    """

    name = "dp-sgd"

    def __init__(
        self,
        noise_multiplier: float = 1.0,
        max_grad_norm: float = 1.0,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
    ) -> None:
        self.noise_multiplier = _positive("noise_multiplier", noise_multiplier)
        self.max_grad_norm = _positive("max_grad_norm", max_grad_norm)
        if not (isinstance(delta, float) and 0 < delta < 1):
            raise ConfigError("delta", delta, "a number in (0, 1), e.g. 1e-5")
        self.delta = delta
        self.target_epsilon = (
            None if target_epsilon is None else _positive("target_epsilon", target_epsilon)
        )

    def check(self, model: torch.nn.Module) -> None:
        """Refuse a model with layers Opacus cannot compute per-sample gradients for."""
        errors = [
            *ModuleValidator.validate(model, strict=False),
            *GradSampleModule.validate(model, strict=False),
        ]
        if errors:
            found = "; ".join(str(e) for e in errors)
            raise ConfigError(
                "model", type(model).__name__, f"a model DP-SGD can train (Opacus: {found})"
            )

    def build(self, model: torch.nn.Module, loss: Loss, training: LocalTraining) -> OwnerDPSGD:
        self.check(model)
        return OwnerDPSGD(self, model, loss, training)


class OwnerDPSGD:
    """The DP-SGD local training of one process (one model copy for all its owners)."""

    def __init__(
        self, settings: DPSGD, model: torch.nn.Module, loss: Loss, training: LocalTraining
    ) -> None:
        self.settings = settings
        self.model = copy.deepcopy(model)
        self.loss = loss
        self.training = training

    def sample_rate(self, examples: int) -> float:
        """Opacus' Poisson rate for ``examples`` rows: one over the batches per epoch."""
        return 1 / math.ceil(examples / self.training.batch_size)

    def steps_per_round(self, examples: int) -> int:
        """DP-SGD steps an owner of ``examples`` rows takes per round."""
        return self.training.epochs * math.ceil(examples / self.training.batch_size)

    def epsilon(self, examples: int, rounds: int) -> float:
        """The owner's epsilon after ``rounds`` rounds (Opacus' RDP accountant)."""
        settings = self.settings
        steps = rounds * self.steps_per_round(examples)
        return owner_epsilon(
            settings.noise_multiplier, self.sample_rate(examples), steps, settings.delta
        )

    def train(
        self,
        data: ClientData,
        global_params: torch.Tensor,
        *,
        seed: int,
        round: int,
        statistics: dict[str, float],
    ) -> tuple[torch.Tensor, float]:
        inputs = data.examples.inputs.index_select(0, data.indices)
        targets = data.examples.targets.index_select(0, data.indices)
        model = copy.deepcopy(self.model)
        # A copy: vector_to_parameters makes the parameters views of the vector it gets.
        torch.nn.utils.vector_to_parameters(global_params.clone(), model.parameters())
        module = GradSampleModule(model)
        batch = self.training.batch_size
        loader = DPDataLoader.from_data_loader(
            DataLoader(TensorDataset(inputs, targets), batch_size=batch),
            generator=torch_generator(seed, "poisson"),
        )
        optimizer = DPOptimizer(
            torch.optim.SGD(module.parameters(), lr=self.training.lr),
            noise_multiplier=self.settings.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            expected_batch_size=batch,
            generator=torch_generator(seed, "dp-noise"),
        )
        losses = []
        module.train()
        with warnings.catch_warnings():
            # Opacus' per-sample-gradient hooks fire on the outputs of the first layer,
            # whose inputs (the owner's rows) need no gradient; torch warns about that.
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            for _ in range(self.training.epochs):
                for x, y in loader:
                    optimizer.zero_grad()
                    loss = self.loss(module(x), y)
                    loss.backward()
                    optimizer.step()
                    if len(y):
                        losses.append(float(loss.detach()))
        local = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
        statistics["owner_epsilon"] = self.epsilon(len(inputs), round)
        statistics["owner_epsilon_next"] = self.epsilon(len(inputs), round + 1)
        mean_loss = sum(losses) / len(losses) if losses else float("nan")
        return local - global_params, mean_loss
