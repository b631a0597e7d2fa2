"""The client half: what a data owner runs, answering the server's messages.

:class:`ClientApp` defines the client half (the architecture, loss, local-training
settings, the client halves of the privacy mechanisms, and where each client's data
comes from); it holds nothing of the server's. An executor hands it once to wherever
clients run, and a :class:`ClientHost` there answers each message for the client it
is addressed to:

- ``train``: load the global parameters (decoding them first where the server
  compresses the downlink, :mod:`privfl.downlink`), train on the client's own data,
  compute ``update = local - global`` from the parameters it loaded, apply every
  mechanism's :meth:`client_step` in order;
  then either reply with the update (encoded by the compressor, if there is one), or,
  under secure aggregation, weight the update into the client's contribution, keep
  it, and reply with the first message of the secure-sum protocol;
- ``secure``: answer one phase of the secure-sum protocol from the state kept.

A host serves any number of clients with one :class:`~privfl.client.LocalTrainer`
(one model copy), or trains the clients of a batch of messages together with one
:class:`~privfl.vectorized.StackedTrainer`; a client's only state between messages is
its secure-sum protocol object, dropped when its round is over, and its table in
:attr:`ClientApp.states` (error feedback's residual), which lasts the run.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from privfl.client import ClientData, LocalTrainer, LocalTraining, Loss
from privfl.client_data import ClientDataSource
from privfl.client_state import ClientStates
from privfl.components import Attack, ClientTrainer, Trainer
from privfl.compressors import Compressor, encode_stack
from privfl.downlink import DownlinkDecoder
from privfl.errors import PerformanceWarning, PrivflError
from privfl.mechanisms import PrivacyMechanism, SecureSumClient
from privfl.messages import Message, MessageError, bytes_tensor, tensor_bytes, unpack_configs
from privfl.seeding import torch_generator
from privfl.stacked_layers import unsupported
from privfl.vectorized import StackedTrainer, small_steps


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
    :param compressor: Encodes each update into the bytes of its reply, after the
        mechanisms' client steps; None sends the update as float32.
    :param states: What each client keeps between rounds (see
        :class:`~privfl.client_state.ClientStates`).
    :param trainer: Local training other than privfl's plain SGD (such as DP-SGD), or
        None.
    """

    model: torch.nn.Module
    loss: Loss
    training: LocalTraining
    data: ClientDataSource
    mechanisms: tuple[PrivacyMechanism, ...] = ()
    attack: Attack | None = None
    malicious: frozenset[int] = frozenset()
    num_classes: int = 0
    compressor: Compressor | None = None
    states: ClientStates = field(default_factory=ClientStates)
    trainer: Trainer | None = None


@dataclass
class _TrainTask:
    """A checked ``train`` message: what training needs, and what finishing it needs."""

    message: Message
    seed: int
    configs: list[dict[str, Any]]
    params: torch.Tensor
    data: ClientData
    poison: Callable[[torch.Tensor], torch.Tensor] | None
    round: int = 0


class ClientHost:
    """Answers messages for the clients of one :class:`ClientApp`, in this process.

    :param app: The client half's definition.
    :param stack: Train the clients of one :meth:`handle_all` call together with a
        :class:`~privfl.vectorized.StackedTrainer` where the model allows it and it
        pays (results equal one-at-a-time training to float round-off, not bit for
        bit). It pays when a training step's forward pass costs under
        :data:`~privfl.vectorized.SINGLE_THREAD_FLOPS`; larger steps (the CNN's) keep
        the cores busy on their own and train one at a time. Where the model cannot
        be stacked (see :func:`privfl.stacked_layers.unsupported`), clients train one at a
        time and a :class:`~privfl.errors.PerformanceWarning` says why, once.
    :param threads: Threads that train parts of a stack, and answer the ``secure``
        messages of different clients, at once. Their work is torch operations, AES
        keystreams and numpy additions, which release the GIL, so on a host that
        simulates many clients this uses every core.
    """

    def __init__(self, app: ClientApp, *, stack: bool = False, threads: int = 1) -> None:
        self.app = app
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None
        self._trainer: LocalTrainer | None = None
        self._stackers: list[StackedTrainer] = []  # one per thread
        self._stacking_pays: bool | None = None  # decided by the first client's data
        self._custom: ClientTrainer | None = None
        if stack:
            reason = unsupported(app.model, app.loss)
            if app.trainer is not None:
                reason = f"clients of the trainer {app.trainer.name!r} train one at a time"
            if reason is None:
                self._stackers = [
                    StackedTrainer(app.model, app.loss, app.training) for _ in range(threads)
                ]
            else:
                warnings.warn(
                    f"training clients one at a time, not stacked: {reason}",
                    PerformanceWarning,
                    stacklevel=2,
                )
        self._secure: dict[int, SecureSumClient] = {}
        self._dim = sum(p.numel() for p in app.model.parameters())
        self._downlink = DownlinkDecoder(self._dim)

    @property
    def trainer(self) -> LocalTrainer:
        """The one trainer (model copy) of this host, built on first use."""
        if self._trainer is None:
            self._trainer = LocalTrainer(self.app.model, self.app.loss, self.app.training)
        return self._trainer

    def handle(self, client_id: int, message: Message) -> Message:
        """Return client ``client_id``'s reply to ``message`` from the server."""
        return self.handle_all({client_id: message})[client_id]

    def handle_all(self, messages: Mapping[int, Message]) -> dict[int, Message]:
        """Return each client's reply to its message (client id -> message).

        With ``stack``, the ``train`` messages of honest clients that start from the
        same parameters train as one stacked computation; every other message is
        answered on its own.
        """
        replies: dict[int, Message] = {}
        tasks: dict[int, _TrainTask] = {}
        secure: list[int] = []
        for client_id, message in messages.items():
            if message.kind == "train":
                tasks[client_id] = self._task(client_id, message)
            elif message.kind == "secure":
                secure.append(client_id)
            else:
                raise MessageError(f"client {client_id} cannot answer a {message.kind!r} message")
        if self._pool is not None and len(secure) > 1:
            answers = self._pool.map(lambda c: self._secure_step(c, messages[c]), secure)
            replies.update(zip(secure, answers, strict=True))
        else:
            replies.update((c, self._secure_step(c, messages[c])) for c in secure)
        for group in self._stack_groups(tasks):
            updates, losses = self._train_stacked([tasks[c] for c in group])
            stack = [tasks.pop(c) for c in group]
            replies.update(self._finish_stack(group, stack, updates, losses))
        for client_id, task in tasks.items():
            statistics: dict[str, float] = {}
            if self.app.trainer is None:
                update, loss = self.trainer.train(
                    task.data, task.params, seed=task.seed, poison=task.poison
                )
            else:
                if self._custom is None:
                    app = self.app
                    self._custom = self.app.trainer.build(app.model, app.loss, app.training)
                update, loss = self._custom.train(
                    task.data, task.params, seed=task.seed, round=task.round, statistics=statistics
                )
            replies[client_id] = self._finish(client_id, task, update, loss, statistics)
        return {client_id: replies[client_id] for client_id in messages}

    def _train_stacked(self, tasks: list[_TrainTask]) -> tuple[torch.Tensor, list[float]]:
        """Train ``tasks`` stacked: ``[clients, dim]`` updates and the mean losses.

        With ``threads > 1`` the clients are cut into that many consecutive parts of
        about equal work, each trained stacked in its own thread on one torch thread,
        into its rows of one update matrix. A thread that loses its core to another
        process then only delays its own part, where torch's own threads would wait
        for each other at every operation. A client's update does not depend on the
        part it is in (each client's arithmetic is its own), so the bytes are those
        of one stack.
        """
        updates = torch.empty(len(tasks), self._dim)
        parts = _parts([len(t.data) for t in tasks], len(self._stackers))
        jobs = [
            (stacker, tasks[start:end], updates[start:end])
            for stacker, (start, end) in zip(self._stackers, parts, strict=False)
        ]

        def train(job: tuple[StackedTrainer, list[_TrainTask], torch.Tensor]) -> list[float]:
            stacker, part, out = job
            return stacker.train(
                [t.data for t in part], part[0].params, [t.seed for t in part], out=out
            )

        if self._pool is None or len(jobs) == 1:
            losses = [loss for job in jobs for loss in train(job)]
        else:
            losses = [loss for part in self._pool.map(train, jobs) for loss in part]
        return updates, losses

    def _stack_groups(self, tasks: Mapping[int, _TrainTask]) -> list[list[int]]:
        """Clients to train stacked, in groups that start from equal parameters."""
        if not self._stackers or not tasks or not self._pays(next(iter(tasks.values()))):
            return []
        groups: list[list[int]] = []
        for client_id, task in tasks.items():
            if task.poison is not None or len(task.data) == 0:
                continue
            for group in groups:
                first = tasks[group[0]].params
                if first is task.params or torch.equal(first, task.params):
                    group.append(client_id)
                    break
            else:
                groups.append([client_id])
        return [group for group in groups if len(group) > 1]

    def _pays(self, task: _TrainTask) -> bool:
        if self._stacking_pays is None and len(task.data):
            example = task.data.examples.inputs[int(task.data.indices[0])]
            self._stacking_pays = small_steps(self.app.model, example, self.app.training.batch_size)
        return bool(self._stacking_pays)

    def _task(self, client_id: int, message: Message) -> _TrainTask:
        self._secure.pop(client_id, None)  # a new round: any unfinished protocol is void
        app, server = self.app, "the server"
        seed = int(message.value("seed", server))
        configs = unpack_configs(message, len(app.mechanisms), server)
        if "downlink" in message.values:  # one decoded tensor for the round's clients
            encoded = tensor_bytes(message.tensor("encoded_params", server))
            params = self._downlink.decode(encoded, message.values["downlink"], server)
        else:
            params = message.tensor("params", server)
        if params.shape != (self._dim,) or params.dtype != torch.float32:
            raise MessageError(
                f"train message from {server}: params of shape {tuple(params.shape)} and "
                f"{params.dtype}, not the model's ({self._dim},) and {torch.float32}"
            )
        poison = None
        if app.attack is not None and client_id in app.malicious:
            attack, classes = app.attack, app.num_classes

            def poison(targets: torch.Tensor) -> torch.Tensor:
                return attack.poison_targets(targets, num_classes=classes)

        round = int(message.values.get("round", 0))
        data = app.data.load(client_id)
        return _TrainTask(message, seed, configs, params, data, poison, round)

    def _finish_stack(
        self,
        clients: list[int],
        tasks: list[_TrainTask],
        updates: torch.Tensor,
        losses: list[float],
    ) -> dict[int, Message]:
        """Finish the clients of a stack: each client's mechanism steps in turn, then,
        where every reply is encoded with the same compression config, the compressor's
        client half for all of them at once
        (:func:`~privfl.compressors.encode_stack`)."""
        compressor, server = self.app.compressor, "the server"
        configs = [t.message.values.get("compression") for t in tasks]
        secure = [t.message.values.get("secure") is not None for t in tasks]
        if self._pool is not None and len(tasks) > 1 and all(secure):
            return self._finish_secure_stack(clients, tasks, updates, losses)
        if compressor is None or any(secure) or any(config != configs[0] for config in configs):
            return {
                client_id: self._finish(client_id, task, update, loss)
                for client_id, task, update, loss in zip(
                    clients, tasks, updates, losses, strict=True
                )
            }
        views = list(updates)
        stepped = [
            self._client_steps(client_id, task, update)
            for client_id, task, update in zip(clients, tasks, views, strict=True)
        ]
        rows = [update for update, _ in stepped]
        if any(row is not view for row, view in zip(rows, views, strict=True)):
            updates = torch.stack(rows)
        encoded, seconds = encode_stack(
            compressor,
            updates,
            config=tasks[0].message.value("compression", server),
            generators=[torch_generator(task.seed, "compressor") for task in tasks],
            states=[self.app.states.of(client_id) for client_id in clients],
            pool=self._pool,
            threads=self._threads,
        )
        # Each client is charged an equal share of the time the stack took to encode,
        # so a round's encode_seconds add up to the time it spent encoding.
        share = seconds / len(clients)
        return {
            client_id: self._encoded_reply(task, loss, statistics, data, share)
            for client_id, task, loss, (_, statistics), data in zip(
                clients, tasks, losses, stepped, encoded, strict=True
            )
        }

    def _finish_secure_stack(
        self,
        clients: list[int],
        tasks: list[_TrainTask],
        updates: torch.Tensor,
        losses: list[float],
    ) -> dict[int, Message]:
        """Finish a stack of secure-sum clients: the mechanisms' client steps in turn,
        then each client's encoding and first protocol message in the threads, as its
        later protocol steps are (encoding and its page faults run without the GIL)."""
        assert self._pool is not None
        jobs = []
        for client_id, task, update, loss in zip(clients, tasks, updates, losses, strict=True):
            stepped, statistics = self._client_steps(client_id, task, update)
            report = {"num_examples": len(task.data), "train_loss": loss}
            jobs.append((client_id, task, stepped, statistics, report))
        replies = self._pool.map(lambda job: self._secure_start(*job), jobs)
        return dict(zip(clients, replies, strict=True))

    def _client_steps(
        self,
        client_id: int,
        task: _TrainTask,
        update: torch.Tensor,
        trained: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The update after the attack (if any) and every mechanism's client step, and
        the statistics they report (starting from the trainer's, ``trained``)."""
        app = self.app
        if app.attack is not None and client_id in app.malicious:
            update = app.attack.craft_update(update, client_id=client_id)
        statistics: dict[str, float] = dict(trained or {})
        for position, (mechanism, config) in enumerate(
            zip(app.mechanisms, task.configs, strict=True)
        ):
            update = mechanism.client_step(
                update,
                config=config,
                generator=torch_generator(task.seed, "mechanism", position),
                statistics=statistics,
            )
        return update, statistics

    @staticmethod
    def _encoded_reply(
        task: _TrainTask,
        train_loss: float,
        statistics: dict[str, float],
        encoded: bytes,
        seconds: float,
    ) -> Message:
        """The ``update`` reply that carries a client's encoded bytes."""
        values = {
            "num_examples": len(task.data),
            "train_loss": train_loss,
            "encode_seconds": seconds,
            "statistics": statistics,
        }
        return Message("update", values, {"encoded": bytes_tensor(encoded)})

    def _finish(
        self,
        client_id: int,
        task: _TrainTask,
        update: torch.Tensor,
        train_loss: float,
        trained: dict[str, float] | None = None,
    ) -> Message:
        """Apply the mechanisms' client steps to a trained update and build the reply
        (with the statistics the trainer reported, ``trained``)."""
        app, server, message = self.app, "the server", task.message
        update, statistics = self._client_steps(client_id, task, update, trained)
        report = {"num_examples": len(task.data), "train_loss": train_loss}
        secure = message.values.get("secure")
        if secure is None and app.compressor is not None:
            started = time.perf_counter()
            encoded = app.compressor.encode(
                update,
                config=message.value("compression", server),
                generator=torch_generator(task.seed, "compressor"),
                state=app.states.of(client_id),
            )
            seconds = time.perf_counter() - started
            return self._encoded_reply(task, train_loss, statistics, encoded, seconds)
        if secure is None:
            return Message("update", {**report, "statistics": statistics}, {"update": update})
        return self._secure_start(client_id, task, update, statistics, report)

    def _secure_start(
        self,
        client_id: int,
        task: _TrainTask,
        update: torch.Tensor,
        statistics: dict[str, float],
        report: dict[str, Any],
    ) -> Message:
        """The first secure-sum message of a client whose mechanisms' steps are done."""
        app, server, message = self.app, "the server", task.message
        secure = message.values["secure"]
        if not _all_finite(update):
            return Message("refused", {"reason": "the update holds NaN or infinite values"})
        names = sorted(statistics)
        weight = 1.0 if message.value("weighting", server) == "unit" else float(len(task.data))
        stats = torch.tensor([statistics[n] for n in names], dtype=update.dtype)
        contribution = torch.cat([update * weight, stats * weight, update.new_tensor([weight])])
        if not _all_finite(contribution):  # a finite update can overflow
            reason = f"the update times its weight {weight:g} overflows float32"
            return Message("refused", {"reason": reason})
        try:  # a client that refuses the server's round settings sits the round out
            client = app.mechanisms[int(secure)].secure_client(
                client_id=client_id, config=task.configs[int(secure)]
            )
            first = client.start(contribution)
        except PrivflError as error:
            return Message("refused", {"reason": str(error)})
        if not client.finished:
            self._secure[client_id] = client
        values = {**report, "phase": client.first_phase, "statistic_names": names}
        return Message("secure-reply", values, {"data": bytes_tensor(first)})

    def _secure_step(self, client_id: int, message: Message) -> Message:
        client = self._secure.get(client_id)
        if client is None:
            raise MessageError(f"client {client_id} has no secure sum under way")
        phase = str(message.value("phase", "the server"))
        try:
            reply = client.step(phase, tensor_bytes(message.tensor("data", "the server")))
        except PrivflError as error:  # a refused request: the server learns why, no more
            del self._secure[client_id]
            return Message("refused", {"phase": phase, "reason": str(error)})
        if client.finished:
            del self._secure[client_id]
        return Message("secure-reply", {"phase": phase}, {"data": bytes_tensor(reply)})


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` is finite. A NaN or an infinity makes the sum
    NaN or infinite, so a finite sum (one pass, no allocation: about 40x faster than
    ``isfinite().all()`` on a 2NN update) settles it; only a sum that overflowed or
    hit a bad value is checked value by value."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _parts(sizes: Sequence[int], count: int) -> list[tuple[int, int]]:
    """Cut ``range(len(sizes))`` into at most ``count`` consecutive, non-empty ranges
    of about equal total size (examples, the work of local training)."""
    bounds = torch.tensor([0, *sizes], dtype=torch.float64).cumsum(0)
    targets = bounds[-1] * torch.arange(1, count) / count
    cuts = torch.searchsorted(bounds, targets).tolist()
    edges = sorted({0, *(min(max(c, 1), len(sizes) - 1) for c in cuts), len(sizes)})
    return list(itertools.pairwise(edges))
