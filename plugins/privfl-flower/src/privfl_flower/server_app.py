"""The Flower ServerApp of a privfl federation: privfl's server half, unchanged.

Its main function waits for the SuperNodes, asks each which privfl clients' data it
holds (:func:`~privfl_flower.executor.connect_nodes`), builds the federation with a
:class:`~privfl_flower.executor.FlowerGridExecutor` and runs its rounds: sampling,
aggregation, server optimisation, client-level DP and its accountant, secure
aggregation's phases and evaluation are privfl's, as in any other run.

Run config keys (``[tool.flwr.app.config]`` of the Flower app, or ``flwr run
--run-config``):

``num-rounds``
    Rounds to run (required).
``min-nodes``
    SuperNodes to wait for before the first round (default 1).
``timeout``
    Seconds to wait for the nodes, and for each exchange's replies, before a node
    that has not answered counts as timed out (default 600).
``run-dir``
    A folder on the SuperLink's machine for privfl's history, checkpoints and final
    model (default: none written).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from privfl.client import ClientData
from privfl.client_data import ClientDataSource
from privfl.errors import ConfigError, DataError
from privfl.federation import Federation
from privfl_flower.executor import FlowerGridExecutor, connect_nodes


class NodeData(ClientDataSource):
    """The server's view of the clients' data: it knows how many clients there are,
    and that each one's data stays on its SuperNode."""

    def __init__(self, num_clients: int) -> None:
        self._num_clients = num_clients

    @property
    def num_clients(self) -> int:
        return self._num_clients

    def load(self, client_id: int) -> ClientData:
        raise DataError(f"client {client_id}'s data is on its SuperNode, not on the server")


def _setting(config: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = config.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(key, value, f"a run config value of type {kind.__name__}")
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(key, value, f"a {kind.__name__}") from None


def run_federation(grid: Grid, run_config: Mapping[str, Any], build: Callable[..., Any]) -> Any:
    """Connect to the nodes, build the federation with ``build`` and run its rounds;
    return the federation (closed)."""
    rounds = _setting(run_config, "num-rounds", None, int)
    timeout = _setting(run_config, "timeout", 600.0, float)
    nodes = connect_nodes(
        grid, min_nodes=_setting(run_config, "min-nodes", 1, int), timeout=timeout
    )
    executor = FlowerGridExecutor(grid, nodes, timeout=timeout)
    federation = build(
        client_data=NodeData(len(nodes)), executor=executor, run_config=dict(run_config)
    )
    if not isinstance(federation, Federation):
        raise ConfigError("build", type(federation).__name__, "a function returning a Federation")
    run_dir = run_config.get("run-dir") or None
    with federation:
        federation.run(rounds, run_dir=run_dir)
    return federation


def make_server_app(build: Callable[..., Any]) -> ServerApp:
    """Return the Flower ServerApp that runs a privfl federation on the SuperNodes.

    :param build: The federation builder (the ClientApp of
        :func:`~privfl_flower.make_client_app` uses the same one): called with keyword
        arguments ``client_data`` (here a :class:`NodeData`: the server holds none),
        ``executor`` (a :class:`FlowerGridExecutor`) and ``run_config`` (the run's
        Flower run config), it returns a :class:`privfl.Federation` built with them.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, context.run_config, build)

    return app
