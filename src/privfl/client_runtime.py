"""The client half: what a data owner runs, answering the server's messages.

:class:`ClientApp` defines the client half (the architecture, loss, local-training
settings, the client halves of the privacy mechanisms, and where each client's data
comes from); it holds nothing of the server's. An executor hands it once to wherever
clients run, and a :class:`ClientHost` there answers each message for the client it
is addressed to:

- ``train``: load the global parameters, train on the client's own data, compute
  ``update = local - global``, apply every mechanism's :meth:`client_step` in order;
  then either reply with the update, or, under secure aggregation, weight the
  update into the client's contribution, keep it, and reply with the first message
  of the secure-sum protocol;
- ``secure``: answer one phase of the secure-sum protocol from the state kept.

A host serves any number of clients with one :class:`~privfl.client.LocalTrainer`
(one model copy); a client's only state between messages is its secure-sum protocol
object, dropped when its round is over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from privfl.client import LocalTrainer, LocalTraining, Loss
from privfl.client_data import ClientDataSource
from privfl.components import Attack
from privfl.mechanisms import PrivacyMechanism, SecureSumClient
from privfl.messages import Message, MessageError, bytes_tensor, tensor_bytes
from privfl.seeding import torch_generator

CONFIG_TENSOR_PREFIX = "config."


@dataclass(frozen=True)
class ClientApp:
    """The client half's definition, handed once to wherever clients run.

    :param model: A module of the federation's architecture (its weights are not used:
        every round starts from the global parameters in the task).
    :param loss: Maps (outputs, targets) to a scalar mean loss.
    :param training: Local-training settings.
    :param data: Where each client finds its own training data.
    :param mechanisms: The privacy mechanisms, whose client halves run in order.
    :param attack: A simulated attack, whose ``poison_targets`` malicious clients use.
    :param malicious: Ids of the simulated malicious clients.
    :param num_classes: Number of classes, for label attacks.
    """

    model: torch.nn.Module
    loss: Loss
    training: LocalTraining
    data: ClientDataSource
    mechanisms: tuple[PrivacyMechanism, ...] = ()
    attack: Attack | None = None
    malicious: frozenset[int] = frozenset()
    num_classes: int = 0


def pack_configs(
    configs: Sequence[Mapping[str, Any]],
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Split mechanisms' client configs into JSON-safe values and named tensors."""
    values: list[dict] = []
    tensors: dict[str, torch.Tensor] = {}
    for position, config in enumerate(configs):
        plain = {}
        for key, value in config.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{CONFIG_TENSOR_PREFIX}{position}.{key}"] = value
            else:
                plain[key] = value
        values.append(plain)
    return values, tensors


def unpack_configs(message: Message, count: int, sender: str) -> list[dict[str, Any]]:
    """Rebuild the ``count`` mechanism configs of a ``train`` message."""
    values = message.value("config", sender)
    if not (isinstance(values, list) and len(values) == count):
        raise MessageError(f"train message from {sender}: expected {count} mechanism configs")
    configs = [dict(v) if isinstance(v, dict) else {} for v in values]
    for name, tensor in message.tensors.items():
        if name.startswith(CONFIG_TENSOR_PREFIX):
            position, _, key = name[len(CONFIG_TENSOR_PREFIX) :].partition(".")
            if not (position.isdigit() and int(position) < count and key):
                raise MessageError(f"train message from {sender} has a stray tensor {name!r}")
            configs[int(position)][key] = tensor
    return configs


class ClientHost:
    """Answers messages for the clients of one :class:`ClientApp`, in this process."""

    def __init__(self, app: ClientApp) -> None:
        self.app = app
        self._trainer: LocalTrainer | None = None
        self._secure: dict[int, SecureSumClient] = {}

    @property
    def trainer(self) -> LocalTrainer:
        """The one trainer (model copy) of this host, built on first use."""
        if self._trainer is None:
            self._trainer = LocalTrainer(self.app.model, self.app.loss, self.app.training)
        return self._trainer

    def handle(self, client_id: int, message: Message) -> Message:
        """Return client ``client_id``'s reply to ``message`` from the server."""
        if message.kind == "train":
            return self._train(client_id, message)
        if message.kind == "secure":
            return self._secure_step(client_id, message)
        raise MessageError(f"client {client_id} cannot answer a {message.kind!r} message")

    def _train(self, client_id: int, message: Message) -> Message:
        self._secure.pop(client_id, None)  # a new round: any unfinished protocol is void
        app, server = self.app, "the server"
        seed = int(message.value("seed", server))
        configs = unpack_configs(message, len(app.mechanisms), server)
        params = message.tensor("params", server)
        expected = self.trainer.flat
        if params.shape != expected.shape or params.dtype != expected.dtype:
            raise MessageError(
                f"train message from {server}: params of shape {tuple(params.shape)} and "
                f"{params.dtype}, not the model's {tuple(expected.shape)} and {expected.dtype}"
            )
        poison = None
        if app.attack is not None and client_id in app.malicious:
            attack, classes = app.attack, app.num_classes

            def poison(targets: torch.Tensor) -> torch.Tensor:
                return attack.poison_targets(targets, num_classes=classes)

        data = app.data.load(client_id)
        update, train_loss = self.trainer.train(data, params, seed=seed, poison=poison)
        statistics: dict[str, float] = {}
        for position, (mechanism, config) in enumerate(zip(app.mechanisms, configs, strict=True)):
            update = mechanism.client_step(
                update,
                config=config,
                generator=torch_generator(seed, "mechanism", position),
                statistics=statistics,
            )
        report = {"num_examples": len(data), "train_loss": train_loss}
        secure = message.values.get("secure")
        if secure is None:
            return Message("update", {**report, "statistics": statistics}, {"update": update})
        if not bool(torch.isfinite(update).all()):
            return Message("refused", {"reason": "the update holds NaN or infinite values"})
        names = sorted(statistics)
        weight = 1.0 if message.value("weighting", server) == "unit" else float(len(data))
        stats = torch.tensor([statistics[n] for n in names], dtype=update.dtype)
        contribution = torch.cat([update * weight, stats * weight, update.new_tensor([weight])])
        client = app.mechanisms[int(secure)].secure_client(
            client_id=client_id, config=configs[int(secure)]
        )
        first = client.start(contribution)
        if not client.finished:
            self._secure[client_id] = client
        values = {**report, "phase": client.first_phase, "statistic_names": names}
        return Message("secure-reply", values, {"data": bytes_tensor(first)})

    def _secure_step(self, client_id: int, message: Message) -> Message:
        client = self._secure.get(client_id)
        if client is None:
            raise MessageError(f"client {client_id} has no secure sum under way")
        phase = str(message.value("phase", "the server"))
        reply = client.step(phase, tensor_bytes(message.tensor("data", "the server")))
        if client.finished:
            del self._secure[client_id]
        return Message("secure-reply", {"phase": phase}, {"data": bytes_tensor(reply)})
