"""The messages between the server half and the client halves, and their byte encoding.

Everything one party learns about another arrives as a :class:`Message`: a kind, a
few JSON-safe values and named tensors. Executors that keep clients in the server's
process may hand the objects over as they are; every other executor sends
:func:`encode`'s bytes, which need no pickle: a safetensors buffer (tensors in their
own dtype and shape, read back without running code) whose header metadata carries
the format version, the kind and the values as JSON. :func:`decode` checks all of it
and raises :class:`MessageError` naming the sender for anything malformed.

Message kinds (the ``kind`` field):

==================  ======  ==================================================
kind                way     content
==================  ======  ==================================================
``train``           down    round, client seed, each mechanism's client config,
                            the compressor's ``compression`` config (if any);
                            tensor ``params`` (the global parameters), or with
                            downlink compression tensor ``encoded_params``
                            (their bytes) and the ``downlink`` config
``update``          up      ``num_examples``, ``train_loss``, ``statistics``;
                            tensor ``update``, or with a compressor tensor
                            ``encoded`` (its bytes) and ``encode_seconds``
``secure``          down    ``phase`` of secure aggregation; tensor ``data``
                            (the protocol's own bytes)
``secure-reply``    up      ``phase``; the first one also ``num_examples``,
                            ``train_loss`` and ``statistic_names``; tensor ``data``
``refused``         up      ``reason``: the client will not take part this round
==================  ======  ==================================================
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from privfl.errors import PrivflError

VERSION = 1
"""Version of the byte format; a message of another version is refused."""

KINDS = ("train", "update", "secure", "secure-reply", "refused")
"""The message kinds privfl's round protocol exchanges."""

_METADATA_KEY = "privfl"


class MessageError(PrivflError):
    """A message could not be decoded or does not say what its kind requires."""


@dataclass(frozen=True)
class Failure:
    """What an executor returns for a client that sent no reply.

    :param reason: ``"dropped"`` (the client went away or its worker died), ``"timed
        out"``, or another short phrase an executor chooses.
    """

    reason: str


@dataclass(frozen=True)
class Message:
    """One message between the server half and a client half.

    :param kind: One of :data:`privfl.messages.KINDS`.
    :param values: JSON-safe values (numbers, strings, booleans, None, lists, tables).
    :param tensors: Named CPU tensors.
    """

    kind: str
    values: Mapping[str, Any] = field(default_factory=dict)
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def value(self, key: str, sender: str) -> Any:
        """Return ``values[key]``; a missing key is a :class:`MessageError` naming ``sender``."""
        try:
            return self.values[key]
        except KeyError:
            raise MessageError(f"{self.kind} message from {sender} lacks {key!r}") from None

    def tensor(self, key: str, sender: str) -> torch.Tensor:
        """Return ``tensors[key]``; a missing one is a :class:`MessageError` naming ``sender``."""
        try:
            return self.tensors[key]
        except KeyError:
            raise MessageError(f"{self.kind} message from {sender} lacks tensor {key!r}") from None


def bytes_tensor(data: bytes | bytearray | memoryview) -> torch.Tensor:
    """Wrap ``data`` as a uint8 tensor, to travel in a message's ``tensors``: a copy of
    ``bytes``; a ``bytearray`` or writable ``memoryview`` is shared, not copied
    (whoever passes one hands it over)."""
    if not len(data):
        return torch.empty(0, dtype=torch.uint8)
    if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly):
        data = bytearray(data)
    return torch.frombuffer(data, dtype=torch.uint8)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of a uint8 tensor made by :func:`bytes_tensor`."""
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise MessageError(
            f"expected a 1-D uint8 tensor of bytes, got {tensor.dim()}-D {tensor.dtype}"
        )
    return tensor.numpy().tobytes()


def encode(message: Message) -> bytes:
    """Return the message as bytes (see the module docstring)."""
    header = {"version": VERSION, "kind": message.kind, "values": dict(message.values)}
    try:
        text = json.dumps(header, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise MessageError(f"{message.kind} message values are not JSON-safe: {error}") from None
    tensors = {name: t.detach().contiguous() for name, t in message.tensors.items()}
    return save_tensors(tensors, metadata={_METADATA_KEY: text})


def decode(data: bytes, *, sender: str) -> Message:
    """Read a message from bytes; anything malformed is a :class:`MessageError` naming ``sender``.

    :param sender: Who sent the bytes, in words (``"client 7"``, ``"the server"``).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise MessageError(f"the message from {sender} is not a privfl message (too short)")
    data = bytes(data)
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise MessageError(f"the message from {sender} is truncated")
    try:
        metadata = json.loads(data[8 : 8 + length])["__metadata__"]
        header = json.loads(metadata[_METADATA_KEY], parse_constant=_refuse_constant)
        tensors = load_tensors(data)
    except (ValueError, KeyError, TypeError) as error:
        raise MessageError(f"the message from {sender} is malformed: {error}") from None
    except Exception as error:  # safetensors raises its own error type for bad buffers
        raise MessageError(f"the message from {sender} is malformed: {error}") from None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        version = header.get("version") if isinstance(header, dict) else None
        raise MessageError(
            f"the message from {sender} has format version {version!r}; this privfl "
            f"reads version {VERSION} (are both sides the same privfl release?)"
        )
    kind, values = header.get("kind"), header.get("values")
    if kind not in KINDS or not isinstance(values, dict):
        raise MessageError(f"the message from {sender} has unknown kind {kind!r}")
    return Message(kind, values, tensors)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def check_finite(value: Any, key: str, sender: str) -> float:
    """Return ``value`` as a finite float, or raise :class:`MessageError` naming ``sender``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError(f"{sender} sent {key} = {value!r}, not a finite number")
    return float(value)


CONFIG_TENSOR_PREFIX = "config."
"""Tensors of a ``train`` message named ``config.<position>.<key>`` belong to the
mechanism config at that position."""


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
