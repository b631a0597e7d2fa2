"""How privfl messages ride inside Flower messages.

A Flower message carries a :class:`flwr.app.RecordDict`; privfl puts one
:class:`flwr.app.ConfigRecord` named ``privfl`` in it. Down (server to a node) it
holds the ids of the node's clients that this exchange addresses, each one's message
as the bytes of :func:`privfl.messages.encode` (a safetensors buffer, no pickle), and
the federation's number of clients; up (a node's reply) the same ids with each
client's encoded reply, or a ``failure`` phrase when the node lost its clients'
state (a privfl :class:`~privfl.messages.Failure`). Down messages also say the
exchange's privfl message ``kind`` and secure-aggregation ``phase``, so that a node
can tell a round's start, and log, without decoding. The handshake (a Flower
``query`` message) asks a node which privfl clients' data it holds.

Nothing here imports privfl (and so torch): Flower starts a ClientApp process for
every message, and one that only forwards bytes to the node's host starts in a
fraction of the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Flower loads on first use: privfl imports this plugin everywhere
    from flwr.app import RecordDict

RECORD = "privfl"
"""The name of privfl's ConfigRecord in every Flower message it sends."""

PRIVFL_ACTION = "train.privfl"
"""The Flower message type of privfl's round messages (a ``train`` action of the app)."""

HELLO_ACTION = "query.privfl"
"""The Flower message type of the handshake: which clients a node holds."""


class WireError(ValueError):
    """A Flower message that does not carry what privfl's records require."""


def pack(
    clients: Sequence[int],
    bodies: Sequence[bytes],
    *,
    num_clients: int = 0,
    kind: str = "",
    phase: str = "",
    failure: str = "",
    detail: str = "",
) -> RecordDict:
    """Return a RecordDict holding ``clients``' encoded messages (or a failure).

    :param kind: The privfl message kind of the exchange (``train`` starts a round,
        so a node may start its host afresh; later phases need the round's host).
    :param phase: The secure-aggregation phase the messages ask for, if any.
    :param failure: Up: the privfl :class:`~privfl.messages.Failure` reason for all of
        ``clients`` (such as ``dropped``), with a ``detail`` for the server's log.
    """
    from flwr.app import ConfigRecord, RecordDict

    return RecordDict(
        {
            RECORD: ConfigRecord(
                {
                    "clients": [int(c) for c in clients],
                    "messages": list(bodies),
                    "num-clients": int(num_clients),
                    "kind": kind,
                    "phase": phase,
                    "failure": failure,
                    "detail": detail,
                }
            )
        }
    )


def unpack(content: RecordDict, sender: str) -> tuple[list[int], list[bytes], dict[str, Any]]:
    """Return (client ids, encoded messages, other fields) of a privfl RecordDict."""
    record = content.config_records.get(RECORD)
    if record is None:
        raise WireError(f"a Flower message from {sender} holds no {RECORD!r} config record")
    clients, bodies = record.get("clients", []), record.get("messages", [])
    if not isinstance(clients, list) or not isinstance(bodies, list):
        raise WireError(f"the privfl record from {sender} has no client and message lists")
    messages = [b for b in bodies if isinstance(b, bytes)]
    if len(messages) != len(bodies):
        raise WireError(f"the privfl record from {sender} holds messages that are not bytes")
    if messages and len(messages) != len(clients):
        raise WireError(
            f"the privfl record from {sender} holds {len(messages)} messages for "
            f"{len(clients)} clients"
        )
    others = {k: v for k, v in record.items() if k not in ("clients", "messages")}
    return [int(c) for c in clients], messages, others


def hello_reply(clients: Sequence[int]) -> RecordDict:
    """The handshake's answer: the privfl clients whose data this node holds."""
    return pack(clients, [])


def clients_of(replies: Mapping[int, RecordDict]) -> dict[int, int]:
    """Map each privfl client to the Flower node that holds its data.

    :param replies: Flower node id -> that node's handshake answer.
    :raises WireError: when two nodes hold one client, or the clients are not
        ``0 .. n-1`` (a node's folder misses a file, or holds another federation's).
    """
    owner: dict[int, int] = {}
    for node in sorted(replies):
        clients, _, _ = unpack(replies[node], f"node {node}")
        for client in clients:
            if client in owner:
                raise WireError(
                    f"client {client} has data on two nodes, {owner[client]} and {node}: "
                    "give each SuperNode its own data-dir"
                )
            owner[client] = node
    missing = sorted(set(range(len(owner))) - set(owner))
    if missing or not owner:
        raise WireError(
            f"the nodes hold clients {sorted(owner)}, not 0..n-1 (missing {missing}): "
            "each client-<id>.safetensors must be on exactly one SuperNode"
        )
    return owner
