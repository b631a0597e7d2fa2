"""privfl-flower: privfl federations on Flower's deployment engine.

A Flower app (a folder with a ``pyproject.toml`` that ``flwr run`` packages) holds
one module-level function that builds the :class:`privfl.Federation` from its
``client_data``, ``executor`` and ``run_config`` keyword arguments, and exposes::

    server = make_server_app(build)   # privfl's server half, in Flower's ServerApp
    client = make_client_app(build)   # each SuperNode: a data owner with its folder

The executor, the ServerApp and the ClientApp are described in
:mod:`privfl_flower.executor`, :mod:`privfl_flower.server_app` and
:mod:`privfl_flower.client_app`.

Importing this package imports neither Flower nor privfl nor torch, and its ClientApp
does not import privfl or torch: privfl loads this package as an entry-point plugin
in every process (where Flower is not needed), and Flower starts a process for every
message a SuperNode gets, whose ClientApp only forwards bytes to the node's privfl
host (:mod:`privfl_flower.node_host`). So the names below load on first use, and an
app module should import privfl inside its ``build`` function too.
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

__all__ = [
    "FlowerGridExecutor",
    "NodeData",
    "connect_nodes",
    "federation_from_config",
    "make_client_app",
    "make_server_app",
    "run_federation",
]

_LAZY = {
    "FlowerGridExecutor": "privfl_flower.executor",
    "connect_nodes": "privfl_flower.executor",
    "federation_from_config": "privfl_flower.from_config",
    "make_client_app": "privfl_flower.client_app",
    "NodeData": "privfl_flower.server_app",
    "make_server_app": "privfl_flower.server_app",
    "run_federation": "privfl_flower.server_app",
}

# privfl's marker (privfl.hookimpl), made here so that importing the package stays light.
_hookimpl = pluggy.HookimplMarker("privfl")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@_hookimpl
def privfl_register_executors() -> list[type]:
    from privfl_flower.executor import FlowerGridExecutor

    return [FlowerGridExecutor]
