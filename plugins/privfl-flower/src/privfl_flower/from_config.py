"""A Flower app's federation from a privfl run configuration, as ``privfl run`` reads it.

An app may describe its federation with the keys and component tables of privfl's
configuration file (``privfl run --config FILE``, see the configuration reference)
instead of Python: its builder returns :func:`federation_from_config` of that
configuration, and the federation is the one ``privfl run`` would build, except that
the clients' data is on the SuperNodes and the executor is Flower's. On the server,
with a ``run-dir``, the configuration is written there as ``config.toml``, as
``privfl run`` writes it, so that ``privfl evaluate``, ``privfl evaluate-party --role
model-owner`` and ``privfl report`` read the Flower run's folder as a run of the
command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from privfl.app.checkpoint import write_atomic
from privfl.app.config import make_config
from privfl.app.runner import CONFIG, build_federation
from privfl.client_data import ClientDataSource
from privfl.components import Executor
from privfl.federation import Federation
from privfl_flower.server_app import NodeData


def federation_from_config(
    config: Mapping[str, Any],
    *,
    client_data: ClientDataSource,
    executor: Executor | str,
    run_config: Mapping[str, Any],
) -> Federation:
    """Return the federation that the privfl run configuration ``config`` describes.

    :param config: Core keys and component tables, as in a ``config.toml`` (``rounds``
        and ``run_dir`` are the Flower run config's ``num-rounds`` and ``run-dir``).
    :param client_data: The builder's ``client_data`` (the server's
        :class:`~privfl_flower.NodeData`, or a node's folder).
    :param executor: The builder's ``executor``: an instance on the server, a name on
        a node (whose host runs the client halves itself).
    :param run_config: The builder's ``run_config`` (Flower's run config).
    """
    settings = make_config(config)
    instance = executor if isinstance(executor, Executor) else None
    if instance is None:  # a node's host: the name only matters for the federation's checks
        settings = dataclasses.replace(settings, executor=str(executor))
    federation, _ = build_federation(
        settings, clients=lambda _source: client_data, executor=instance
    )
    run_dir = run_config.get("run-dir")
    if run_dir and isinstance(client_data, NodeData):
        rounds = int(run_config.get("num-rounds", settings.rounds))
        done = dataclasses.replace(settings, rounds=rounds, run_dir=str(run_dir))
        Path(str(run_dir)).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(str(run_dir)) / CONFIG, done.to_toml().encode())
    return federation
