"""The federation: the Python front door that runs rounds through the hooks.

A :class:`Federation` is the server half of a federated-learning job plus the
definition of its client half. It is built from any ``torch.nn.Module``, the clients'
data (training tensors with a partition, simulated, or any
:class:`~privfl.client_data.ClientDataSource` such as each owner's own folder), an
optional test split, a loss, metrics, and components given by name or as instances.
:meth:`Federation.run` calls the session and round hooks; everything that varies is a
plugin. The server half reaches clients only through its executor's messages.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privfl.client import LocalTraining, Loss, flatten_parameters
from privfl.client_data import (
    ClientDataSource,
    as_pair,
    client_data_source,
    known_targets,
    num_classes,
)
from privfl.client_runtime import ClientApp
from privfl.client_state import ClientStates
from privfl.components import (
    Aggregator,
    Attack,
    ClientSampler,
    Evaluator,
    Executor,
    Metric,
    Sampling,
    ServerOptimizer,
    TensorPair,
    Trainer,
)
from privfl.compressor_stack import compressor_names, stack_compressors
from privfl.compressors import Compressor, check_compression
from privfl.downlink import DownlinkEncoder, check_downlink_bits
from privfl.errors import ConfigError, PluginError
from privfl.federation_state import (
    check_attack_and_trainer,
    check_loadable,
    choose_malicious,
    component_states,
    load_component_states,
)
from privfl.mechanisms import MechanismSetup, PrivacyMechanism, check_combination
from privfl.plugins import PluginManager, get_plugin_manager
from privfl.records import RoundRecord
from privfl.registry import ComponentRegistry
from privfl.tasks import accuracy, infer_task, resolve_loss, task_metrics

ComponentSpec = str | Any
"""A component given by registered name or as an instance."""


class Federation:
    """A federated-learning job: data split among clients, a global model, components.

    :param model: The global model; its current weights are the starting point.
    :param train: Training data, split among simulated clients by ``partition``: a
        :class:`TensorPair`, an ``(inputs, targets)`` pair of tensors, a
        ``TensorDataset`` (or a ``DataLoader`` over one), or a map-style dataset of
        ``(input, target)`` examples that fits in memory.
    :param partition: One index array (numpy or tensor) per client into ``train``.
    :param client_data: Instead of ``train`` and ``partition``: where each client
        half finds its own data (for example
        :class:`~privfl.client_data.FolderData`, one file per owner).
    :param test: Optional test data (same forms as ``train``), used by evaluators.
    :param task: ``"classification"`` or ``"regression"``; unset: inferred from the
        targets (floating point: regression). It chooses the default loss and metrics.
    :param loss: Maps (outputs, targets) to a scalar mean loss, or a name of
        :data:`privfl.tasks.LOSSES` (``"mse"``, ``"cross_entropy"``, ...); unset: the
        task's (cross-entropy, or mean squared error for regression).
    :param metrics: Name -> per-example metric (:mod:`privfl.tasks`); unset: the
        task's (accuracy, or MSE, MAE and R^2 for regression).
    :param training: Local-training settings (epochs, batch size, learning rate).
    :param sampler: The client sampler, a registered name or an instance. Names are
        built with ``options[name]`` as keyword options, like the other components.
    :param aggregator: The aggregator, a registered name or an instance.
    :param server_optimizer: The server optimizer, a registered name or an instance.
    :param executor: The executor, a registered name or an instance.
    :param evaluators: Names or instances; run on evaluation rounds.
    :param mechanisms: Privacy mechanisms, names or instances, applied in order.
    :param compressor: An update compressor (name or instance) whose client half encodes
        each update after the mechanisms' client steps, or None to send float32; a list
        of two (or names separated by commas) stacks a sparsifier and a coder of its
        values (:mod:`privfl.compressor_stack`), such as ``["random-mask", "qsgd"]``.
    :param downlink_bits: Send the clients the global model in this many bits per
        coordinate (2 to 16; :mod:`privfl.downlink`, Caldas et al. 2018): clients train
        from the decoded model, and the server applies the aggregate to its exact
        parameters. 0 or None: float32.
    :param trainer: How clients train on their own data instead of plain SGD (a
        :class:`~privfl.components.Trainer`, such as the DP-SGD of the
        ``privfl-opacus`` plugin), or None.
    :param attack: A simulated attack (name or instance) by malicious clients, or None.
    :param malicious_fraction: With an attack, the fraction of clients that are
        malicious, chosen once with the seed.
    :param options: Per-component keyword options, ``{name: {option: value}}``.
    :param eval_every: Evaluate every this many rounds (and always after the last).
    :param seed: Root seed of every random choice made during rounds.
    :param plugins: A plugin manager; defaults to :func:`privfl.get_plugin_manager`.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        train: TensorPair | Sequence[torch.Tensor] | Any = None,
        partition: Sequence[np.ndarray | torch.Tensor] | None = None,
        client_data: ClientDataSource | None = None,
        test: TensorPair | Sequence[torch.Tensor] | Any = None,
        task: str | None = None,
        loss: Loss | str | None = None,
        metrics: Mapping[str, Metric] | None = None,
        training: LocalTraining | None = None,
        sampler: ComponentSpec = "uniform",
        aggregator: ComponentSpec = "fedavg",
        server_optimizer: ComponentSpec = "sgd",
        executor: ComponentSpec = "vectorized",
        evaluators: Sequence[ComponentSpec] = ("plaintext",),
        mechanisms: Sequence[ComponentSpec] = (),
        compressor: ComponentSpec | None = None,
        downlink_bits: int | None = None,
        trainer: Trainer | None = None,
        attack: ComponentSpec | None = None,
        malicious_fraction: float = 0.2,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        eval_every: int = 1,
        seed: int = 0,
        plugins: PluginManager | None = None,
    ) -> None:
        self.plugins = plugins if plugins is not None else get_plugin_manager()
        self.hook = self.plugins.hook
        self.registry: ComponentRegistry = self.plugins.components
        self._options = {name: dict(opts) for name, opts in (options or {}).items()}
        self.test = as_pair(test, "test") if test is not None else None
        self.client_data = client_data_source(train, partition, client_data)
        self.model = copy.deepcopy(model)
        self._model_flat = flatten_parameters(self.model)
        self.params = self._model_flat.clone()
        self.task = infer_task(known_targets(self.client_data, self.test), task)
        """The learning task, ``"classification"`` or ``"regression"``."""
        self.loss = resolve_loss(loss, self.task)
        self.metrics = dict(metrics) if metrics is not None else task_metrics(self.task)
        if self.task == "regression" and any(m is accuracy for m in self.metrics.values()):
            raise ConfigError(
                "metrics", "accuracy", "regression metrics (leave metrics unset: mse, mae, r2)"
            )
        self.training = training if training is not None else LocalTraining()
        if not (isinstance(eval_every, int) and eval_every >= 1):
            raise ConfigError("eval_every", eval_every, "an integer >= 1")
        self.eval_every = eval_every
        self.seed = seed
        self.sampler: ClientSampler = self._component("sampler", sampler, ClientSampler)
        self.expected_clients = self.sampler.expected_clients(self.num_clients)
        self.aggregator: Aggregator = self._component("aggregator", aggregator, Aggregator)
        self.server_optimizer: ServerOptimizer = self._component(
            "server_optimizer", server_optimizer, ServerOptimizer
        )
        self.executor: Executor = self._component("executor", executor, Executor)
        self.evaluators: list[Evaluator] = [
            self._component("evaluator", e, Evaluator) for e in evaluators
        ]
        self.mechanisms: list[PrivacyMechanism] = [
            self._component("mechanism", m, PrivacyMechanism) for m in mechanisms
        ]
        self.attack: Attack | None = (
            None if attack is None else self._component("attack", attack, Attack)
        )
        check_attack_and_trainer(self.attack, trainer, self.task)
        self.trainer = trainer
        """Local training other than plain SGD, or None."""
        sampling = self.sampler.sampling(self.num_clients)
        self.secure_position = check_combination(
            self.mechanisms, self.aggregator, self.attack, sampling
        )
        """Position of the secure-aggregation mechanism in ``mechanisms``, or None."""
        self.fixed_denominator = any(m.fixed_denominator for m in self.mechanisms)
        """True when a mechanism (client-level DP) needs sums divided by expected clients."""
        self.sums_only = self.fixed_denominator or self.secure_position is not None
        """True when the round aggregates from sums of contributions, not stacked updates."""
        self.compressor: Compressor | None = (
            None if compressor is None else self._compressor(compressor)
        )
        """Encodes each update in the client half and decodes it here, or None."""
        if self.compressor is not None:
            check_compression(self.compressor, self.mechanisms, self.executor, self.secure_position)
            self.compressor.setup(
                dimension=self.params.numel(),
                seed=self.seed,
                shapes=[tuple(p.shape) for p in self.model.parameters()],
            )
        bits = check_downlink_bits(downlink_bits)
        self.downlink: DownlinkEncoder | None = (
            DownlinkEncoder(bits, dimension=self.params.numel(), seed=self.seed) if bits else None
        )
        """Encodes the global model that the clients receive each round, or None (float32)."""
        self.client_states = ClientStates()
        """What client halves in this process keep between rounds; checkpointed."""
        self.malicious = choose_malicious(
            malicious_fraction, self.num_clients, seed, attacked=attack is not None
        )
        self.round = 0
        self.total_rounds = 0
        self.history: list[RoundRecord] = []
        self.run_dir: Path | None = None
        self.checkpoint_every = 1
        self.console: Any = None
        self.stop_reason: str | None = None
        """Why the last :meth:`run` stopped early (a ``privfl_should_stop`` reason), or None."""
        self._app: ClientApp | None = None
        self.evaluations: dict[str, dict[str, float]] = {}
        """The latest scores of each evaluator, by evaluator name."""
        self.stash: dict[str, Any] = {}
        """Per-federation state that plugins keep between hook calls, under their own keys."""
        self.settings: dict[str, Any] = self._api_settings()
        """The settings the run was made with (the command line puts its configuration
        here, less what may change on resume; a federation built in Python, its task,
        model, clients, local training and seed); checkpoints carry them, and loading
        a checkpoint made with other settings is refused."""
        self._set_up_mechanisms(sampling)
        self.hook.privfl_configure(federation=self)

    @property
    def num_clients(self) -> int:
        """The number of clients."""
        return self.client_data.num_clients

    @property
    def client_app(self) -> ClientApp:
        """The client half's definition, built once and handed to the executor."""
        if self._app is None:
            self._app = ClientApp(
                model=self.model,
                loss=self.loss,
                training=self.training,
                data=self.client_data,
                mechanisms=tuple(self.mechanisms),
                attack=self.attack,
                malicious=self.malicious,
                num_classes=(
                    num_classes(self.client_data, self.test) if self.attack is not None else 0
                ),
                compressor=self.compressor,
                states=self.client_states,
                trainer=self.trainer,
            )
        return self._app

    def components(self) -> dict[str, Any]:
        """Return the single components by kind (lists for evaluators and mechanisms)."""
        return {
            "sampler": self.sampler,
            "aggregator": self.aggregator,
            "server_optimizer": self.server_optimizer,
            "executor": self.executor,
            "evaluator": self.evaluators,
            "mechanism": self.mechanisms,
        }

    def run(
        self,
        rounds: int,
        *,
        run_dir: str | Path | None = None,
        console: Any = None,
        checkpoint_every: int = 1,
    ) -> list[RoundRecord]:
        """Run rounds until round ``rounds`` (counting rounds already run) and return them.

        :param rounds: The number of the last round, so ``run(50)`` after 20 rounds runs
            30 more.
        :param run_dir: A folder for the history, checkpoints and final model (the
            built-in run-directory plugin writes them); ``None`` writes nothing.
        :param console: A :class:`rich.console.Console` for the progress bar and the
            per-round table; ``None`` runs quietly.
        :param checkpoint_every: With a ``run_dir``, checkpoint every this many rounds
            (and after the last).
        :returns: The records of the rounds run in this call.
        """
        if not (isinstance(rounds, int) and rounds >= 1):
            raise ConfigError("rounds", rounds, "an integer >= 1")
        if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
            raise ConfigError("checkpoint_every", checkpoint_every, "an integer >= 1")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and self.round == 0:
            from privfl.builtin.rundir import refuse_overwrite

            refuse_overwrite(self.run_dir)
        self.checkpoint_every = checkpoint_every
        self.console = console
        self.total_rounds = rounds
        start = self.round + 1
        first_new = len(self.history)
        status, reason = "failed", None
        self.stop_reason = None
        try:
            self.executor.start(self.client_app)
            self.hook.privfl_session_start(federation=self, start_round=start, total_rounds=rounds)
            for number in range(start, rounds + 1):
                record = self.hook.privfl_round_protocol(federation=self, round=number)
                if record is None:
                    raise PluginError(
                        "no plugin implements privfl_round_protocol (is privfl.builtin.protocol "
                        "blocked in PRIVFL_BLOCK_PLUGINS?)"
                    )
                self.round = number
                self.history.append(record)
                self.hook.privfl_round_finish(federation=self, record=record)
                reason = self.hook.privfl_should_stop(federation=self, record=record)
                if reason is not None:
                    status, self.stop_reason = "stopped", reason
                    break
            else:
                status = "complete"
        finally:
            self.hook.privfl_session_finish(federation=self, status=status, stop_reason=reason)
        return self.history[first_new:]

    def resume(self, run_dir: str | Path) -> None:
        """Load the last checkpoint of ``run_dir``, so that ``run(rounds, run_dir=run_dir)``
        continues that run where it stopped.

        A run folder written from Python holds no ``config.toml`` (its model and data
        are Python objects that the command line cannot rebuild), so ``privfl resume``
        refuses it: build the same federation again and call this.

        :raises ConfigError: when the folder holds no checkpoint, or one made with other
            settings.
        """
        from privfl.app.checkpoint import load_checkpoint
        from privfl.builtin.rundir import CHECKPOINT

        path = Path(run_dir) / CHECKPOINT
        if not path.is_file():
            raise ConfigError("run_dir", str(run_dir), f"a run folder holding {CHECKPOINT}")
        self.load_state_dict(load_checkpoint(path))

    def close(self) -> None:
        """Release the executor's workers or connections (a later :meth:`run` restarts them).

        Worker processes also end when this process exits; a ``with`` block closes them
        as soon as it ends.
        """
        self.executor.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def is_eval_round(self, number: int) -> bool:
        """True when round ``number`` ends with an evaluation."""
        return number % self.eval_every == 0 or number == self.total_rounds

    def evaluate(self, *, final: bool = True) -> dict[str, float]:
        """Score the current global parameters with the evaluators.

        :param final: Whether this is the evaluation after the last round; evaluators
            marked ``final_only`` run only then.
        """
        if self.test is None:
            return {}
        model = self.global_model()
        metrics: dict[str, float] = {}
        for evaluator in self.evaluators:
            if evaluator.final_only and not final:
                continue
            scores = evaluator.evaluate(
                model=model, test=self.test, loss=self.loss, metrics=self.metrics
            )
            self.evaluations[evaluator.name] = scores
            metrics.update(scores)
        return metrics

    def global_model(self) -> torch.nn.Module:
        """Return the federation's model holding the current global parameters.

        The module is the federation's own: copy it before changing it.
        """
        self._model_flat.copy_(self.params)
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Return what a checkpoint needs: round, global parameters, component states."""
        return {
            "round": self.round,
            "params": self.params.clone(),
            "components": component_states(self.components(), self.client_states),
            "settings": dict(self.settings),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`; components must match by kind and name,
        the settings must be the same, and the parameters finite."""
        check_loadable(state["params"], self.params, state.get("settings", {}), self.settings)
        load_component_states(self.components(), self.client_states, state["components"])
        self.params = state["params"].clone()
        self.round = int(state["round"])

    def _set_up_mechanisms(self, sampling: Sampling | None) -> None:
        """Call every mechanism's set-up with what it needs (the one contract for all)."""
        for position, mechanism in enumerate(self.mechanisms):
            mechanism.setup(
                MechanismSetup(
                    sampling=sampling,
                    expected_clients=self.expected_clients,
                    num_clients=self.num_clients,
                    dimension=self.params.numel(),
                    seed=self.seed,
                    position=position,
                    create=lambda kind, name: self.registry.create(
                        kind, name, self.options_for(name)
                    ),
                    secure_aggregation=self.secure_position is not None,
                    mechanisms=tuple(self.mechanisms),
                    unit_weights=self.fixed_denominator or self.aggregator.weighting == "unit",
                    compressor=self.compressor,
                )
            )

    def _api_settings(self) -> dict[str, Any]:
        """What a checkpoint of a federation built in Python must match on load."""
        return {
            "task": self.task,
            "model": type(self.model).__name__,
            "parameters": self.params.numel(),
            "clients": self.num_clients,
            "seed": self.seed,
            "training": dataclasses.asdict(self.training),
            "trainer": None if self.trainer is None else self.trainer.name,
            # None, not 0, for float32: checkpoints made before the key existed match
            "downlink_bits": None if self.downlink is None else self.downlink.bits,
        }

    def options_for(self, name: str) -> dict[str, Any]:
        """Return the keyword options given for the component registered as ``name``."""
        return dict(self._options.get(name, {}))

    def _compressor(self, spec: ComponentSpec | Sequence[ComponentSpec]) -> Compressor:
        """The compressor that ``spec`` names: one, or a stack of a sparsifier and a
        value coder (a list, or names separated by commas)."""
        specs = compressor_names(spec) if isinstance(spec, str) else spec
        stages = [
            self._component("compressor", stage, Compressor)
            for stage in (specs if isinstance(specs, Sequence) else [specs])
        ]
        known = [self.registry.get("compressor", n) for n in self.registry.names("compressor")]
        return stack_compressors(stages, known)

    def _component(self, kind: str, spec: ComponentSpec, base: type) -> Any:
        if isinstance(spec, str):
            return self.registry.create(kind, spec, self.options_for(spec))
        if not isinstance(spec, base):
            raise ConfigError(kind, spec, f"a registered name or a {base.__name__} instance")
        return spec
