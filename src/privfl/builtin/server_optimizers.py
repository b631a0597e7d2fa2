"""Built-in server optimizers: a plain step, server momentum, adaptive optimizers.

``sgd`` with ``server_lr = 1`` is FedAvg's server update (the new global model is the
weighted mean of the clients' models). ``fedavgm`` adds server momentum (Hsu et al.
2019); ``fedadam``, ``fedyogi`` and ``fedadagrad`` are the adaptive server optimizers
of Reddi et al. 2021 ("Adaptive Federated Optimization", Algorithm 2). The math lives
in :mod:`privfl.algorithms.server_optimization`; the classes here keep the state between rounds
(moments and the step count) and checkpoint it with ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from privfl.algorithms import server_optimization as so
from privfl.components import ServerOptimizer
from privfl.errors import ConfigError
from privfl.options import positive_number
from privfl.plugins import hookimpl


def _decay(key: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1):
        raise ConfigError(key, value, "a number in [0, 1)")
    return float(value)


class ServerSGD(ServerOptimizer):
    """``params + server_lr * update``.

    :param server_lr: The server learning rate; 1 is plain FedAvg.
    """

    name = "sgd"
    flags = MappingProxyType({"server_lr": "--server-lr"})

    def __init__(self, server_lr: float = 1.0) -> None:
        if not (isinstance(server_lr, (int, float)) and math.isfinite(server_lr) and server_lr > 0):
            raise ConfigError("server_lr", server_lr, "a finite number > 0")
        self.server_lr = float(server_lr)

    def step(self, params: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return params + self.server_lr * update


class _StatefulServerOptimizer(ServerOptimizer):
    """A server optimizer whose state is a few tensors shaped like the parameters.

    The state starts empty and takes the parameters' shape at the first step.
    ``state_dict`` returns ``{"optimizer": name, "step": int, <tensor name>: tensor}``;
    ``load_state_dict`` refuses a state saved by another optimizer, and an empty
    mapping (nothing saved) resets the optimizer.
    """

    state_names: ClassVar[tuple[str, ...]]
    flags = MappingProxyType({"server_lr": "--server-lr"})

    def __init__(self) -> None:
        self.steps = 0
        self.state: dict[str, torch.Tensor] = {}

    def initial_state(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the state before the first step."""
        return {name: torch.zeros_like(params) for name in self.state_names}

    def step(self, params: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        if params.shape != update.shape:
            raise ValueError(
                f"params and update differ in shape: {tuple(params.shape)} != {tuple(update.shape)}"
            )
        state = self.state or self.initial_state(params)
        for name, tensor in state.items():
            if tensor.shape != params.shape:
                raise ValueError(
                    f"{self.name} state {name!r} has shape {tuple(tensor.shape)}, "
                    f"the parameters {tuple(params.shape)}"
                )
        params, self.state = self.update_rule(params, update, state)
        self.steps += 1
        return params

    def update_rule(
        self, params: torch.Tensor, update: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the new parameters and state (a pure function of its arguments)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.name, "step": self.steps}
        state.update({name: tensor.clone() for name, tensor in self.state.items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            self.steps, self.state = 0, {}
            return
        saved_by = state.get("optimizer")
        if saved_by != self.name:
            raise ConfigError(
                "checkpoint",
                f"a state of server optimizer {saved_by!r}",
                f"a state saved by server optimizer {self.name!r}; resume with "
                f"--server-opt {saved_by} or start a new run",
            )
        expected = {"optimizer", "step", *self.state_names}
        steps = state.get("step")
        tensors = {k: v for k, v in state.items() if k in self.state_names}
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            raise ConfigError("checkpoint", steps, f"{self.name} state: step an integer >= 0")
        if set(state) - expected or (steps > 0 and set(tensors) != set(self.state_names)):
            raise ConfigError(
                "checkpoint",
                sorted(state),
                f"{self.name} state keys optimizer, step and, after the first step, "
                f"{', '.join(self.state_names)}",
            )
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise ConfigError("checkpoint", sorted(tensors), f"{self.name} state as tensors")
        self.steps = steps
        self.state = {name: tensor.clone() for name, tensor in tensors.items()}


class FedAvgM(_StatefulServerOptimizer):
    """FedAvgM, server momentum (Hsu et al. 2019).

    ``v = momentum * v + update``, then ``params + server_lr * v``.

    :param server_lr: The server learning rate.
    :param momentum: The decay of ``v``.
    """

    name = "fedavgm"
    state_names = ("velocity",)

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.server_lr = positive_number("server_lr", server_lr)
        self.momentum = _decay("momentum", momentum)

    def update_rule(self, params, update, state):
        params, velocity = so.fedavgm_step(
            params, update, state["velocity"], server_lr=self.server_lr, momentum=self.momentum
        )
        return params, {"velocity": velocity}


class FedAdam(_StatefulServerOptimizer):
    """FedAdam (Reddi et al. 2021, Algorithm 2; no bias correction, ``v`` starts at tau^2).

    :param server_lr: The server learning rate eta.
    :param beta1: Decay of the first moment.
    :param beta2: Decay of the second moment.
    :param tau: Adaptivity: added to the root of the second moment.
    """

    name = "fedadam"
    state_names = ("m", "v")
    rule = staticmethod(so.fedadam_step)

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__()
        self.server_lr = positive_number("server_lr", server_lr)
        self.beta1 = _decay("beta1", beta1)
        self.beta2 = _decay("beta2", beta2)
        self.tau = positive_number("tau", tau)

    def initial_state(self, params):
        return {"m": torch.zeros_like(params), "v": so.initial_second_moment(params, self.tau)}

    def update_rule(self, params, update, state):
        params, m, v = self.rule(
            params,
            update,
            state["m"],
            state["v"],
            server_lr=self.server_lr,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )
        return params, {"m": m, "v": v}


class FedYogi(FedAdam):
    """FedYogi (Reddi et al. 2021, Algorithm 2): FedAdam with Yogi's second moment.

    :param server_lr: The server learning rate eta.
    :param beta1: Decay of the first moment.
    :param beta2: Decay of the second moment.
    :param tau: Adaptivity: added to the root of the second moment.
    """

    name = "fedyogi"
    rule = staticmethod(so.fedyogi_step)


class FedAdagrad(_StatefulServerOptimizer):
    """FedAdagrad (Reddi et al. 2021, Algorithm 2 with beta1 = 0; ``v`` starts at tau^2).

    :param server_lr: The server learning rate eta.
    :param tau: Adaptivity: added to the root of the summed squares.
    """

    name = "fedadagrad"
    state_names = ("v",)

    def __init__(self, server_lr: float = 0.01, tau: float = 1e-3) -> None:
        super().__init__()
        self.server_lr = positive_number("server_lr", server_lr)
        self.tau = positive_number("tau", tau)

    def initial_state(self, params):
        return {"v": so.initial_second_moment(params, self.tau)}

    def update_rule(self, params, update, state):
        params, v = so.fedadagrad_step(
            params, update, state["v"], server_lr=self.server_lr, tau=self.tau
        )
        return params, {"v": v}


@hookimpl
def privfl_register_server_optimizers() -> list[type]:
    return [ServerSGD, FedAvgM, FedAdam, FedYogi, FedAdagrad]
