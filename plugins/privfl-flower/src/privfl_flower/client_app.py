"""The Flower ClientApp of a privfl federation: a SuperNode is a data owner.

Each SuperNode holds the data of one or more privfl clients in its own folder, given
in its node config as ``data-dir``: the files ``client-<id>.safetensors`` that
:func:`privfl.client_data.write_client_folders` writes (tensors ``inputs`` and
``targets``). The node answers two kinds of Flower message:

- ``query.privfl`` (the handshake): which privfl clients' files the folder holds;
- ``train.privfl``: privfl messages for some of those clients (a round's ``train``
  message, then the secure-aggregation phases). They are answered by the node's
  privfl host (:mod:`privfl_flower.node_host`), a process started by the run's first
  such message, which keeps the clients' secure-aggregation state between the
  phases of a round; its address and key stay in the run's Context on the node.

Node config keys (``flower-supernode --node-config 'data-dir="/data/owner-a"'``):

``data-dir``
    The owner's folder (required).
``threads``
    torch threads for local training (default 1, as privfl's ``serial`` executor
    uses for small models, so that the replies are the same bytes).
``idle-timeout``
    Seconds the node's host waits for the next message before it exits (default 3600).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from privfl_flower import node_host
from privfl_flower.wire import hello_reply, pack, unpack

_CLIENT_FILE = re.compile(r"client-(\d+)\.safetensors")
_STATE = "privfl.host"  # the Context.state record that holds the host's address and key


class NodeConfigError(ValueError):
    """A SuperNode's node config lacks what privfl needs (raised on the node, reported
    to the server by Flower as the ClientApp's error)."""


def _data_dir(context: Context) -> Path:
    value = context.node_config.get("data-dir")
    if not isinstance(value, str) or not Path(value).is_dir():
        raise NodeConfigError(
            f"node config data-dir = {value!r}: expected the owner's folder of "
            "client-<id>.safetensors files (flower-supernode --node-config "
            "'data-dir=\"/path/to/folder\"')"
        )
    return Path(value)


def owned_clients(folder: Path) -> list[int]:
    """The privfl clients whose data ``folder`` holds, by their file names."""
    found = (_CLIENT_FILE.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def make_client_app(build: Callable[..., Any], *, mods: Sequence[Mod] = ()) -> ClientApp:
    """Return the Flower ClientApp that answers privfl messages on each SuperNode.

    :param build: The federation builder that the ServerApp uses too, a module-level
        function (the node's host imports it by name) called with keyword arguments
        ``client_data`` (here the node's :class:`~privfl.client_data.FolderData`),
        ``executor`` and ``run_config``; only the client half of what it returns is
        used on a node.
    :param mods: Flower mods wrapped around both handlers (``ClientApp(mods=...)``).
    """
    reference = f"{build.__module__}:{build.__qualname__}"
    if "<" in reference or "." in build.__qualname__:
        raise ValueError(f"build = {reference}: expected a function at the top of a module")
    app = ClientApp(mods=list(mods))

    @app.query("privfl")
    def hello(message: Message, context: Context) -> Message:
        return Message(hello_reply(owned_clients(_data_dir(context))), reply_to=message)

    @app.train("privfl")
    def answer(message: Message, context: Context) -> Message:
        clients, bodies, fields = unpack(message.content, "the server")
        batch = dict(zip(clients, bodies, strict=True))
        host = _host(context)
        starts_round = fields.get("kind") == "train"
        if host is None or (starts_round and not _reachable(*host)):
            if not starts_round:  # the clients' protocol state is gone with its host
                lost = "the node's privfl host is gone, and its clients' round state with it"
                return Message(pack(clients, [], failure="dropped", detail=lost), reply_to=message)
            host = node_host.start(
                reference,
                data_dir=str(_data_dir(context)),
                num_clients=int(fields["num-clients"]),
                run_config=dict(context.run_config),
                threads=int(context.node_config.get("threads", 1)),
                idle_timeout=float(context.node_config.get("idle-timeout", 3600.0)),
            )
            context.state.config_records[_STATE] = ConfigRecord(
                {"address": host[0], "key": host[1]}
            )
        try:
            replies = node_host.ask(*host, batch)
        except node_host.HostGoneError as error:
            detail = f"the node's privfl host is gone ({error})"
            return Message(pack(clients, [], failure="dropped", detail=detail), reply_to=message)
        return Message(pack(list(replies), list(replies.values())), reply_to=message)

    return app


def _host(context: Context) -> tuple[str, bytes] | None:
    """The address and key of this run's host on the node, if one was started."""
    record = context.state.config_records.get(_STATE)
    if record is None:
        return None
    address, key = record["address"], record["key"]
    assert isinstance(address, str)
    assert isinstance(key, bytes)
    return address, key


def _reachable(address: str, key: bytes) -> bool:
    try:
        node_host.ask(address, key, {})
    except node_host.HostGoneError:
        return False
    return True


__all__ = ["NodeConfigError", "make_client_app", "owned_clients"]
