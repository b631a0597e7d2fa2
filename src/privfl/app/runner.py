"""Runs described by a :class:`privfl.app.config.RunConfig`: build, run, resume, evaluate.

The command line is a thin layer over these functions. Every setting is checked
before anything is trained or written: unknown component names, impossible values
and unreadable data fail first, and the run directory is created only afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from privfl.app.checkpoint import load_checkpoint, write_atomic
from privfl.app.config import (
    RunConfig,
    apply_component_flags,
    check_components,
    load_toml,
    make_config,
    with_dataset_defaults,
)
from privfl.builtin.rundir import (
    CHECKPOINT,
    HISTORY,
    MODEL,
    lock_run_dir,
    read_history,
    remove_leftovers,
)
from privfl.client import LocalTraining
from privfl.client_data import ClientDataSource, client_data_source
from privfl.components import Datasets, Executor
from privfl.errors import ConfigError
from privfl.federation import Federation
from privfl.options import declared_options
from privfl.plugins import PluginManager, get_plugin_manager
from privfl.records import RoundRecord
from privfl.registry import ComponentRegistry
from privfl.seeding import derive_seed
from privfl.tasks import infer_task, task_loss, task_metrics

logger = logging.getLogger(__name__)
CONFIG = "config.toml"
DEFAULT_CLIENTS = 100
"""Clients of a run that leaves ``clients`` unset on a dataset not split by owner."""


@dataclass
class Run:
    """A federation built from a config, with its data and run directory."""

    config: RunConfig
    federation: Federation
    data: Datasets
    run_dir: Path
    lock: int | None = None
    """The open file that locks the run folder while this process uses it."""


def build_federation(
    config: RunConfig,
    *,
    plugins: PluginManager | None = None,
    clients: Callable[[ClientDataSource], ClientDataSource] | None = None,
    executor: Executor | None = None,
) -> tuple[Federation, Datasets]:
    """Load the data and build the federation that ``config`` describes.

    :param clients: Changes the clients' data source before the federation is built (a
        privacy audit adds its canary clients this way).
    :param executor: An executor instance to use instead of ``config.executor`` (a
        deployment engine's, such as privfl-flower's, which a name cannot build).
    """
    pm = plugins if plugins is not None else get_plugin_manager()
    registry = pm.components
    check_components(config, registry)
    if config.report:
        from privfl.app.report import require_matplotlib  # lazily: it imports this module

        require_matplotlib()
    config = with_dataset_defaults(config, registry)
    data = _create(registry, config, "dataset", config.dataset).load()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "model"))
        model = _model(registry, config, data)
    client_data = _client_data(registry, config, data)
    if clients is not None:
        source = client_data_source(
            client_data.get("train"), client_data.get("partition"), client_data.get("client_data")
        )
        client_data = {"client_data": clients(source)}
    federation = Federation(
        model=model,
        **client_data,
        test=data.test,
        task=config.task,
        training=LocalTraining(
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            proximal_mu=config.proximal_mu,
        ),
        sampler=config.sampler,
        aggregator=config.aggregator,
        server_optimizer=config.server_optimizer,
        executor=config.executor if executor is None else executor,
        evaluators=config.evaluators,
        mechanisms=config.mechanisms,
        compressor=config.compressor,
        downlink_bits=config.downlink_bits,
        attack=config.attack,
        malicious_fraction=config.malicious_fraction,
        options=config.tables,
        eval_every=config.eval_every,
        seed=config.seed,
        plugins=pm,
    )
    federation.settings = config.settings()
    return federation, data


def _client_data(registry: ComponentRegistry, config: RunConfig, data: Datasets) -> dict:
    """The federation's client data: the dataset's owners, or its training rows split
    among ``clients`` simulated clients by the partitioner."""
    if data.client_data is not None:
        owners = data.client_data.num_clients
        if config.clients not in (None, owners):
            raise ConfigError(
                "clients",
                config.clients,
                f"{owners} (dataset {config.dataset} has {owners} data owners, one client "
                "each), or leave clients unset",
            )
        return {"client_data": data.client_data}
    assert data.train is not None
    clients = DEFAULT_CLIENTS if config.clients is None else config.clients
    if clients > len(data.train):
        raise ConfigError("clients", clients, f"at most {len(data.train)} (the examples)")
    partition = _create(registry, config, "partition", config.partition).split(
        data.train.targets, clients, seed=derive_seed(config.seed, "partition")
    )
    return {"train": data.train, "partition": partition}


def _model(registry: ComponentRegistry, config: RunConfig, data: Datasets) -> torch.nn.Module:
    """Build the model with its table; an ``in_features`` option left at 0 (tabular
    models) gets the dataset's number of input columns."""
    name = with_dataset_defaults(config, registry).model
    assert name is not None
    options = config.table(name)
    declared = {spec.name for spec in declared_options(registry.get("model", name))}
    if "in_features" in declared and not options.get("in_features"):
        options["in_features"] = int(data.test.inputs[0].numel())
    return registry.create("model", name, options)


def start_run(config: RunConfig, *, plugins: PluginManager | None = None) -> Run:
    """Check everything, then create the run directory and write the resolved config."""
    federation, data = build_federation(config, plugins=plugins)
    run_dir = Path(config.run_dir) if config.run_dir else _new_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("run_dir", str(run_dir), "a folder (a file of that name is there)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            "run_dir", str(run_dir), "a new or empty folder (continue a run with `privfl resume`)"
        )
    config = replace(config, run_dir=str(run_dir))
    write_atomic(run_dir / CONFIG, config.to_toml().encode())
    logger.debug("new run in %s with this configuration:\n%s", run_dir, config.to_toml())
    return Run(config, federation, data, run_dir, lock_run_dir(run_dir))


def resume_run(run_dir: str | Path, *, plugins: PluginManager | None = None) -> Run:
    """Rebuild a run from its folder and load its last checkpoint, if any."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file() and (run_dir / CHECKPOINT).is_file():
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a run folder of the command line, holding {CONFIG}: this one was written by "
            "the Python API, whose model and data only Python can rebuild; continue it "
            "with federation.resume(run_dir) and federation.run(rounds, run_dir=run_dir)",
        )
    if not (run_dir / CONFIG).is_file():
        raise ConfigError("run_dir", str(run_dir), f"a run folder holding {CONFIG}")
    lock = lock_run_dir(run_dir)
    try:
        remove_leftovers(run_dir)
        config = make_config(load_toml(run_dir / CONFIG))
        federation, data = build_federation(config, plugins=plugins)
        history = read_history(run_dir)  # a damaged history is refused before any write
        if (run_dir / CHECKPOINT).exists():
            federation.load_state_dict(load_checkpoint(run_dir / CHECKPOINT))
        elif history:
            raise ConfigError(
                "run_dir",
                str(run_dir),
                f"a run folder whose {CHECKPOINT} is there: {HISTORY} records rounds, "
                "but their checkpoint is missing (restore it, or start a new run)",
            )
        if federation.round >= config.rounds and (run_dir / MODEL).exists():
            raise ConfigError("run_dir", str(run_dir), "a run that has rounds left to run")
    except BaseException:
        os.close(lock)
        raise
    # A run killed after its last checkpoint but before its model was written resumes
    # with no round to run and writes the model.
    return Run(config, federation, data, run_dir, lock)


def execute(run: Run, *, console: Any = None) -> list[RoundRecord]:
    """Run the remaining rounds of ``run``, writing into its folder.

    Evaluators marked ``final_only`` (such as ``smpc``) also get their scores written
    to ``evaluation-NAME.json`` when the last round has run. With ``report`` set, the
    run's report goes to ``RUN_DIR/report`` (``privfl.app.report.write_report``).
    """
    try:
        with run.federation:
            records = run.federation.run(
                run.config.rounds,
                run_dir=run.run_dir,
                console=console,
                checkpoint_every=run.config.checkpoint_every,
            )
    finally:
        if run.lock is not None:
            os.close(run.lock)
            run.lock = None
    if run.federation.round == run.config.rounds:
        for evaluator in run.federation.evaluators:
            scores = run.federation.evaluations.get(evaluator.name)
            if evaluator.final_only and scores is not None:
                write_evaluation(run.run_dir, evaluator.name, scores)
    if run.config.report:
        from privfl.app.report import REPORT_FOLDER, write_report

        write_report([run.run_dir], run.run_dir / REPORT_FOLDER)
    return records


def evaluate_run(
    run_dir: str | Path,
    backend: str,
    *,
    limit: int = 0,
    plugins: PluginManager | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Score a finished run's final model with evaluator ``backend``; write the JSON.

    The scores go to ``RUN_DIR/evaluation-BACKEND.json``.

    :param limit: Use only the first ``limit`` test examples (0: all).
    :param on_progress: Passed to evaluators that report progress (``on_progress``).
    """
    run_dir = Path(run_dir)
    config = finished_run_config(run_dir)
    registry = (plugins if plugins is not None else get_plugin_manager()).components
    options = config.table(backend)
    if limit:
        options["limit"] = limit
    evaluator = registry.create("evaluator", backend, options)
    if on_progress is not None and hasattr(evaluator, "on_progress"):
        evaluator.on_progress = on_progress
    data, model = final_model(run_dir, config, registry)
    task = infer_task(data.test.targets, config.task)
    scores = evaluator.evaluate(
        model=model, test=data.test, loss=task_loss(task), metrics=task_metrics(task)
    )
    write_evaluation(run_dir, backend, scores)
    return scores


def finished_run_config(run_dir: Path, key: str = "run_dir") -> RunConfig:
    """The configuration of the finished run in ``run_dir``; a folder without its config
    or final model is a ConfigError on ``key`` (the caller's name for the folder)."""
    if not (run_dir / CONFIG).exists() or not (run_dir / MODEL).exists():
        raise ConfigError(key, str(run_dir), f"a finished run folder holding {CONFIG} and {MODEL}")
    return make_config(load_toml(run_dir / CONFIG))


def final_model(
    run_dir: Path, config: RunConfig, registry: ComponentRegistry
) -> tuple[Datasets, torch.nn.Module]:
    """The run's data and its final model, built with the run's tables and loaded from
    ``run_dir`` (what ``privfl evaluate`` and ``privfl evaluate-party`` score)."""
    data = _create(registry, config, "dataset", config.dataset).load()
    model = _model(registry, config, data)
    _load_model(model, run_dir / MODEL)
    return data, model


def _load_model(model: torch.nn.Module, path: Path) -> None:
    """Load the state dict at ``path`` into ``model``; a damaged or foreign file is a
    ConfigError naming it."""
    try:
        model.load_state_dict(load_file(path))
    except (OSError, RuntimeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(
            "model",
            str(path),
            f"this run's model as safetensors ({reason}); run `privfl resume` on a run "
            "killed before writing it",
        ) from None


def write_evaluation(run_dir: Path, backend: str, scores: Mapping[str, float]) -> Path:
    """Write ``scores`` to ``RUN_DIR/evaluation-BACKEND.json`` (atomically); return the path."""
    path = run_dir / f"evaluation-{backend}.json"
    write_atomic(path, (json.dumps({"backend": backend, **scores}, indent=2) + "\n").encode())
    return path


def _create(registry: ComponentRegistry, config: RunConfig, kind: str, name: str) -> Any:
    """Build component ``name`` of ``kind`` with its table of ``config``."""
    return registry.create(kind, name, config.table(name))


def _new_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{config.model or config.dataset}-{config.partition}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def config_from_file_and_flags(
    path: str | None,
    flags: Mapping[str, Any],
    component_flags: Mapping[str, Any] | None = None,
    *,
    plugins: PluginManager | None = None,
) -> RunConfig:
    """Merge a TOML file (if given) and command-line values (which win).

    :param flags: Core keys, and ``tables`` from ``--option``.
    :param component_flags: Flag -> value of the flags components declare (such as
        ``--dp-clip``); each goes to the chosen components that declare it.
    """
    config = make_config(load_toml(path) if path else {}, flags)
    if component_flags:
        registry = (plugins if plugins is not None else get_plugin_manager()).components
        config = apply_component_flags(config, component_flags, registry)
    return config
