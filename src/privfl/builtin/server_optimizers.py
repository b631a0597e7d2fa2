"""Built-in server optimizer: a plain step with a server learning rate.

With ``server_lr = 1`` this is FedAvg's server update (the new global model is the
weighted mean of the clients' models). Adaptive server optimizers (Reddi et al. 2021)
plug in through the same ``privfl_register_server_optimizers`` hook.
"""

from __future__ import annotations

import math

import torch

from privfl.components import ServerOptimizer
from privfl.errors import ConfigError
from privfl.plugins import hookimpl


class ServerSGD(ServerOptimizer):
    """``params + server_lr * update``."""

    name = "sgd"
    config_keys = ("server_lr",)

    def __init__(self, server_lr: float = 1.0) -> None:
        if not (isinstance(server_lr, (int, float)) and math.isfinite(server_lr) and server_lr > 0):
            raise ConfigError("server_lr", server_lr, "a finite number > 0")
        self.server_lr = float(server_lr)

    def step(self, params: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return params + self.server_lr * update


@hookimpl
def privfl_register_server_optimizers() -> list[type]:
    return [ServerSGD]
