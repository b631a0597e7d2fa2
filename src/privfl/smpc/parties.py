"""One compute party's view of an SMPC evaluation: its own shares, openings over the wire.

The protocols of :mod:`privfl.smpc.protocols` and :mod:`privfl.smpc.inference` work on
sharings that stack both parties' shares on dimension 0. A party process runs them
unchanged on a *slot layout*: its own share in its slot (0 or 1) and zeros in the other.
Every local step of those protocols acts on each slot separately (party 0's public terms
go to slot 0 only), so slot ``p`` evolves exactly as party ``p``'s share does in the
one-process :class:`~privfl.smpc.session.Session`, while the other slot only ever holds
zeros and opened (public) values. The price is local arithmetic done twice; the gain is
one implementation of every protocol. The interactive step, :meth:`PartySession.open`,
exchanges this party's slot with the peer through a :class:`~privfl.smpc.channel.Channel`.

The model's structure (layer kinds and shapes, never values) travels as JSON
(:func:`describe`, :func:`skeleton`) so that the data owner and the dealer can plan the
same computation on meta tensors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from privfl.errors import ConfigError
from privfl.smpc.channel import Channel
from privfl.smpc.dealer import Dealer, Material, Request
from privfl.smpc.inference import (
    Flatten,
    MaxPool2x2,
    ReLU,
    SharedConv2d,
    SharedLayer,
    SharedLinear,
    SharedModel,
)
from privfl.smpc.ring import FixedPoint
from privfl.smpc.ring_matmul import get_ring_matmul
from privfl.smpc.session import Session
from privfl.smpc.shared import BinarySharedTensor, SharedTensor
from privfl.smpc.traffic import OpeningKind, OpeningLog, Traffic


def slot(share: torch.Tensor, party: int) -> torch.Tensor:
    """``share`` in slot ``party`` of a stacked tensor, zeros in the other slot."""
    pair = [torch.zeros_like(share), torch.zeros_like(share)]
    pair[party] = share
    return torch.stack(pair)


def as_material(request: Request, party: int, shares: list[torch.Tensor]) -> Material:
    """A party's shares of one piece of dealer material, in the form the protocols take."""
    slots = [slot(share, party) for share in shares]
    if request.kind in ("triple", "mask"):
        return tuple(SharedTensor(s) for s in slots)
    if request.kind == "binary_triple":
        return tuple(BinarySharedTensor(s) for s in slots)
    return (BinarySharedTensor(slots[0]), SharedTensor(slots[1]))


class PartyMaterial(Dealer):
    """The dealer's material as one party received or derived it, served in plan order."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Request, Material]] = deque()
        self.seconds = 0.0

    def put(self, request: Request, material: Material) -> None:
        """Queue the material of the next planned request."""
        self._queue.append((request, material))

    def _generate(self, request: Request) -> Material:
        raise RuntimeError(f"no dealer material was received for {request}")


class PartySession(Session):
    """Compute party ``party`` (0: model owner, 1: data owner) in a three-process run.

    It holds only its own shares (slot layout) and opens a value by exchanging its share
    with the peer. Masked comparison bits travel packed when ``pack_bits``. Outputs are
    never opened both ways: party 0 sends its share (:meth:`send_output_share`) and only
    party 1 learns them (:meth:`receive_output`).
    """

    def __init__(
        self,
        party: int,
        channel: Channel,
        frac_bits: int,
        matmul_method: str = "int64",
        pack_bits: bool = True,
        keep_opened_values: bool = False,
    ) -> None:
        if party not in (0, 1):
            raise ConfigError("party", party, "0 (model owner) or 1 (data owner)")
        self.party, self.peer = party, 1 - party
        self.channel = channel
        self.pack_bits = pack_bits
        self.encoder = FixedPoint(frac_bits)
        self.matmul = get_ring_matmul(matmul_method)
        self.matmul_method = matmul_method
        self.traffic = Traffic()  # rounds only: the channel counts the bytes
        self.log = OpeningLog(keep_values=keep_opened_values)
        self.dealer: PartyMaterial = PartyMaterial()

    def share_ring(self, x: torch.Tensor) -> SharedTensor:
        raise TypeError(
            "a party process does not share inputs through its session: the owner calls "
            "privfl.smpc.distributed.share_as_owner and the peer receive_share"
        )

    def open(
        self, x: SharedTensor | BinarySharedTensor, kind: OpeningKind, width: int = 64
    ) -> torch.Tensor:
        """Open a masked value: exchange this party's share with the peer's (one round);
        with ``width`` below 64 only the low bits of each word, packed if ``pack_bits``."""
        if kind is OpeningKind.OUTPUT:
            raise ValueError("outputs go to the data owner only: use send/receive_output")
        mine = x.shares[self.party]
        if width < 64:
            mine = mine & ((1 << width) - 1)
        if width < 64 and self.pack_bits:
            theirs = self.channel.exchange_fields(mine, width, self.peer)
        else:
            theirs = self.channel.exchange(mine, self.peer)
        values = mine ^ theirs if isinstance(x, BinarySharedTensor) else mine + theirs
        if width < 64:
            values = values & ((1 << width) - 1)
        self.traffic.rounds += 1
        self.log.record(kind, values, width)
        return values

    def send_output_share(self, x: SharedTensor) -> None:
        """Party 0: send its share of an output to the data owner, learning nothing."""
        if self.party != 0:
            raise ValueError("only party 0 sends output shares; party 1 receives them")
        self.channel.send(x.shares[0], 1)

    def receive_output(self, x: SharedTensor) -> torch.Tensor:
        """Party 1 (the data owner): the output, from its share and party 0's."""
        if self.party != 1:
            raise ValueError("only party 1, the data owner, receives outputs")
        values = x.shares[1] + self.channel.recv(x.shape, 0)
        self.log.record(OpeningKind.OUTPUT, values)
        return values


def map_tensors(model: SharedModel, fn: Callable[[SharedTensor], SharedTensor]) -> SharedModel:
    """``model`` with ``fn`` applied to every weight, then bias, layer by layer.

    This order is the order in which an owner's shares are dealt and drawn.
    """

    def bias(x: SharedTensor | None) -> SharedTensor | None:
        return None if x is None else fn(x)

    layers: list[SharedLayer] = []
    for layer in model.layers:
        if isinstance(layer, SharedLinear):
            layer = replace(layer, weight_t=fn(layer.weight_t), bias=bias(layer.bias))
        elif isinstance(layer, SharedConv2d):
            layer = replace(layer, weight=fn(layer.weight), bias=bias(layer.bias))
        layers.append(layer)
    return SharedModel(tuple(layers))


def describe(model: SharedModel) -> list[dict[str, Any]]:
    """The public structure of a shared model as JSON: layer kinds and shapes, no values."""

    def shape(x: SharedTensor | None) -> list[int] | None:
        return None if x is None else list(x.shape)

    out: list[dict[str, Any]] = []
    for layer in model.layers:
        if isinstance(layer, SharedLinear):
            out.append(
                {"layer": "linear", "weight": shape(layer.weight_t), "bias": shape(layer.bias)}
            )
        elif isinstance(layer, SharedConv2d):
            out.append(
                {
                    "layer": "conv2d",
                    "weight": shape(layer.weight),
                    "bias": shape(layer.bias),
                    "stride": list(layer.stride),
                    "padding": list(layer.padding),
                }
            )
        else:
            out.append({"layer": _SIMPLE_NAMES[type(layer)]})
    return out


_SIMPLE: dict[str, SharedLayer] = {"relu": ReLU(), "maxpool2x2": MaxPool2x2(), "flatten": Flatten()}
_SIMPLE_NAMES = {type(layer): name for name, layer in _SIMPLE.items()}


def _meta(shape: Any) -> SharedTensor | None:
    if shape is None:
        return None
    if not (isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ConfigError("model description shape", shape, "a list of positive integers")
    return SharedTensor(torch.empty(2, *shape, dtype=torch.int64, device="meta"))


def _pair(value: Any, least: int) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ConfigError("model description stride/padding", value, "a list of two integers")
    if min(value) < least:
        raise ConfigError("model description stride/padding", value, f"integers >= {least}")
    return (value[0], value[1])


def skeleton(description: list[dict[str, Any]]) -> SharedModel:
    """A shape-only (meta) shared model from :func:`describe`'s JSON, checked as it is read."""
    layers: list[SharedLayer] = []
    for entry in description:
        kind = entry.get("layer")
        if kind in _SIMPLE:
            layers.append(_SIMPLE[kind])
            continue
        weight = _meta(entry.get("weight"))
        if weight is None or kind not in ("linear", "conv2d"):
            raise ConfigError("model description layer", entry, "linear, conv2d, relu, ...")
        if kind == "linear":
            layers.append(SharedLinear(weight, _meta(entry.get("bias"))))
        else:
            stride, padding = _pair(entry.get("stride"), 1), _pair(entry.get("padding"), 0)
            layers.append(SharedConv2d(weight, _meta(entry.get("bias")), stride, padding))
    return SharedModel(tuple(layers))
