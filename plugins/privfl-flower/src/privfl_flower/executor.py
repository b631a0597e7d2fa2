"""The ``flower-grid`` executor: client halves on Flower SuperNodes, reached through a Grid.

Inside a Flower ServerApp, privfl's server half sends its messages through this
executor. Each privfl client lives on the SuperNode that holds its data (the map
comes from the handshake, :func:`connect_nodes`), and each exchange sends one Flower
message per node, carrying the encoded privfl messages of that node's clients
(:mod:`privfl_flower.wire`), through :meth:`flwr.serverapp.Grid.push_messages`; the
replies are pulled as they arrive until ``timeout`` seconds have passed.

A node whose reply carries a Flower error that is not its app's own (it went
offline, its message expired) or that does not answer in time turns its clients'
replies into ``dropped`` or ``timed out`` :class:`~privfl.messages.Failure`\\ s; under
secure aggregation such clients are dropouts and the sum survives while the
protocol's threshold does. An error raised by the client half itself (a bug, a
missing data file) is raised here as a :class:`ClientError` naming the node, as the
other executors do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from privfl.client_runtime import ClientApp
from privfl.components import Executor
from privfl.errors import ClientError, ConfigError, PrivflError
from privfl.messages import Failure, Message, decode, encode
from privfl_flower.wire import HELLO_ACTION, PRIVFL_ACTION, clients_of, pack, unpack

if TYPE_CHECKING:  # Flower loads on first use: privfl imports this plugin everywhere
    from flwr.app import Message as FlowerMessage
    from flwr.serverapp import Grid

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
"""How often the executor asks the SuperLink for the replies that have arrived."""


def app_errors() -> frozenset[int]:
    """Flower's error codes for a ClientApp that raised or could not be loaded: a bug to
    report, where every other error (a node offline, a message expired, a ClientApp
    process killed) is a client that dropped."""
    from flwr.common.constant import ErrorCode

    return frozenset({ErrorCode.CLIENT_APP_RAISED_EXCEPTION, ErrorCode.LOAD_CLIENT_APP_EXCEPTION})


class FlowerGridExecutor(Executor):
    """Runs each client half on the SuperNode that holds its data, through a Flower Grid.

    :param grid: The Grid that Flower hands the ServerApp's main function.
    :param nodes: privfl client id -> Flower node id (see :func:`connect_nodes`).
    :param timeout: Seconds to wait for an exchange's replies before the nodes that
        have not answered count as timed out.
    """

    name = "flower-grid"

    def __init__(self, grid: Grid, nodes: Mapping[int, int], timeout: float = 600.0) -> None:
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)) or not (
            timeout > 0
        ):
            raise ConfigError("timeout", timeout, "a number of seconds > 0")
        if not nodes:
            raise ConfigError("nodes", dict(nodes), "a map of privfl client id -> Flower node id")
        self.grid = grid
        self.nodes = dict(nodes)
        self.timeout = float(timeout)
        self._started = False

    def start(self, app: ClientApp) -> None:
        # The client half's definition is not sent: each node builds its own from the
        # Flower app (the same builder), with its own data folder.
        self._started = True

    def send_and_receive(self, messages: Mapping[int, Message]) -> dict[int, Message | Failure]:
        if not self._started:
            raise RuntimeError("FlowerGridExecutor.start() was not called")
        unknown = sorted(set(messages) - set(self.nodes))
        if unknown:
            raise ClientError(f"clients {unknown} are on no SuperNode this run connected to")
        batches: dict[int, list[int]] = {}
        for client in sorted(messages):
            batches.setdefault(self.nodes[client], []).append(client)
        kinds = {m.kind for m in messages.values()}
        phases = {str(m.values.get("phase", "")) for m in messages.values()}
        kind = kinds.pop() if len(kinds) == 1 else ""
        phase = phases.pop() if len(phases) == 1 else ""
        from flwr.app import Message as FlowerMessage

        outgoing = [
            FlowerMessage(
                pack(
                    clients,
                    [encode(messages[c]) for c in clients],
                    num_clients=len(self.nodes),
                    kind=kind,
                    phase=phase,
                ),
                dst_node_id=node,
                message_type=PRIVFL_ACTION,
            )
            for node, clients in batches.items()
        ]
        replies: dict[int, Message | Failure] = {}
        for node, reply in self._exchange(outgoing).items():
            replies.update(self._read(node, batches.pop(node), reply))
        for clients in batches.values():  # no reply in time
            replies.update(dict.fromkeys(clients, Failure("timed out")))
        return {client: replies[client] for client in messages}

    def _exchange(self, outgoing: list[FlowerMessage]) -> dict[int, FlowerMessage]:
        """Push ``outgoing``; return node -> reply for those that came within the timeout."""
        return exchange(self.grid, outgoing, self.timeout)

    def _read(
        self, node: int, clients: list[int], reply: FlowerMessage
    ) -> dict[int, Message | Failure]:
        if reply.has_error():
            code, reason = reply.error.code, reply.error.reason
            if code in app_errors():
                raise ClientError(f"the privfl ClientApp on node {node} failed: {reason}")
            logger.warning(
                "node %s (clients %s) dropped: Flower error %s, %s", node, clients, code, reason
            )
            return dict.fromkeys(clients, Failure("dropped"))
        answered, bodies, fields = unpack(reply.content, f"node {node}")
        if fields.get("failure"):
            logger.warning("node %s (clients %s): %s", node, clients, fields.get("detail"))
            return dict.fromkeys(clients, Failure(str(fields["failure"])))
        if sorted(answered) != clients or len(bodies) != len(clients):
            raise ClientError(f"node {node} answered for clients {answered}, not {clients}")
        out: dict[int, Message | Failure] = {}
        for client, body in zip(answered, bodies, strict=True):
            out[client] = decode(body, sender=f"client {client} (node {node})")
            if self.on_reply is not None:
                self.on_reply(client)
        return out


def exchange(grid: Grid, outgoing: list[FlowerMessage], timeout: float) -> dict[int, FlowerMessage]:
    """Push ``outgoing`` through ``grid``; return node -> reply for the replies that
    arrive within ``timeout`` seconds (pulled as they come, unlike
    :meth:`Grid.send_and_receive`, which looks every 3 seconds)."""
    pushed = set(grid.push_messages(outgoing))  # a message that could not be pushed: none
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in outgoing}
    pending = set(sent) & pushed
    replies: dict[int, FlowerMessage] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            mid = reply.metadata.reply_to_message_id
            if mid in pending:
                pending.discard(mid)
                replies[sent[mid]] = reply
        if pending:
            time.sleep(POLL_SECONDS)
    return replies


def connect_nodes(grid: Grid, *, min_nodes: int = 1, timeout: float = 600.0) -> dict[int, int]:
    """Wait for ``min_nodes`` SuperNodes, ask each which clients it holds; return
    privfl client id -> Flower node id.

    :raises PrivflError: when fewer nodes connect, or do not answer, within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    nodes: list[int] = sorted(grid.get_node_ids())
    while len(nodes) < min_nodes:
        if time.monotonic() > deadline:
            raise PrivflError(
                f"{len(nodes)} SuperNodes connected within {timeout:g} s, not {min_nodes}"
            )
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    from flwr.app import Message as FlowerMessage

    hello = [
        FlowerMessage(pack([], []), dst_node_id=node, message_type=HELLO_ACTION) for node in nodes
    ]
    replies = exchange(grid, hello, max(deadline - time.monotonic(), 1.0))
    failed = _failed(nodes, replies)
    if failed:
        raise PrivflError(
            f"SuperNodes {failed} did not answer privfl's handshake: check their logs"
        )
    return clients_of({node: reply.content for node, reply in replies.items()})


def _failed(nodes: Iterable[int], replies: Mapping[int, Any]) -> list[str]:
    return [
        f"{node} ({replies[node].error.reason})" if node in replies else f"{node} (no answer)"
        for node in nodes
        if node not in replies or replies[node].has_error()
    ]
