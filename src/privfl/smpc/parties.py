"""One compute party's view of an SMPC evaluation: its own shares, openings over the wire.

The protocols of :mod:`privfl.smpc.protocols` and :mod:`privfl.smpc.inference` work on
sharings that stack the shares of their ``parties`` on dimension 0: both in the
one-process :class:`~privfl.smpc.session.Session`, only its own in a party process
(``parties`` is ``(p,)``). Every local step acts on each share by the party it belongs to
(party 0 alone adds public terms, each party truncates its own way), so party ``p``'s
share evolves exactly as it does in the one-process session, with one implementation of
every protocol and no arithmetic on the absent share. The interactive step,
:meth:`PartySession.open_many`, exchanges this party's share with the peer through a
:class:`~privfl.smpc.channel.Channel`.

The model's structure (layer kinds and shapes, never values) travels as JSON
(:func:`describe`, :func:`skeleton`) so that the data owner and the dealer can plan the
same computation on meta tensors.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
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
from privfl.smpc.session import Opened, Session
from privfl.smpc.shared import BinarySharedTensor, SharedTensor
from privfl.smpc.traffic import OpeningKind, OpeningLog, Traffic


def own_share(share: torch.Tensor, party: int) -> SharedTensor:
    """Party ``party``'s own ``share`` of a secret, as the sharing its process holds."""
    return SharedTensor(share.unsqueeze(0), (party,))


def as_material(request: Request, party: int, shares: list[torch.Tensor]) -> Material:
    """A party's shares of one piece of dealer material, in the form the protocols take."""
    own = [share.unsqueeze(0) for share in shares]
    if request.kind in ("triple", "mask"):
        return tuple(SharedTensor(s, (party,)) for s in own)
    if request.kind in ("binary_triple", "held_and"):
        return tuple(BinarySharedTensor(s, (party,)) for s in own)
    bits = BinarySharedTensor(own[0], (party,))
    return (bits, *(SharedTensor(s, (party,)) for s in own[1:]))


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

    It holds only its own shares (``parties`` is ``(party,)``) and opens a value by
    exchanging its share with the peer. Masked comparison bits travel packed when
    ``pack_bits``. Outputs are never opened both ways: party 0 sends its share
    (:meth:`send_output_share`) and only party 1 learns them (:meth:`receive_output`).
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
        self.parties = (party,)
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

    def open_many(self, parts: Sequence[Opened]) -> list[torch.Tensor]:
        """Open masked values in one round: exchange this party's shares with the peer's,
        in one message; with ``width`` below 64 only the low bits of each word, packed if
        ``pack_bits``."""
        mine = []
        for x, kind, width in parts:
            if kind is OpeningKind.OUTPUT:
                raise ValueError("outputs go to the data owner only: use send/receive_output")
            if x.parties != self.parties:
                raise ValueError(f"party {self.party} cannot open shares of {x.parties}")
            share = x.shares[0]
            mine.append(share & ((1 << width) - 1) if width < 64 else share)
        widths = [width if self.pack_bits else 64 for _, _, width in parts]
        theirs = self.channel.exchange_many(mine, widths, self.peer)
        out = []
        for (x, kind, width), own, other in zip(parts, mine, theirs, strict=True):
            values = own ^ other if isinstance(x, BinarySharedTensor) else own + other
            if width < 64:
                values = values & ((1 << width) - 1)
            self.log.record(kind, values, width)
            out.append(values)
        self.traffic.rounds += 1
        return out

    def open_held(
        self, mine0: BinarySharedTensor, mine1: BinarySharedTensor, kind: OpeningKind
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Send the peer this party's own value (``mine0`` for party 0, ``mine1`` for
        party 1, held alone) and receive the peer's, in one round."""
        mine = (mine0, mine1)[self.party]
        if mine.parties != self.parties or mine0.shape != mine1.shape:
            raise ValueError(f"party {self.party} cannot open shares of {mine.parties}")
        theirs = self.channel.exchange(mine.shares[0], self.peer)
        values = (mine.shares[0], theirs) if self.party == 0 else (theirs, mine.shares[0])
        for v in values:
            self.log.record(kind, v)
        self.traffic.rounds += 1
        return values

    def send_output_share(self, x: SharedTensor) -> None:
        """Party 0: send its share of an output to the data owner, learning nothing."""
        if self.party != 0:
            raise ValueError("only party 0 sends output shares; party 1 receives them")
        self.channel.send(x.shares[0], 1)  # its own share, the only one it holds

    def receive_output(self, x: SharedTensor) -> torch.Tensor:
        """Party 1 (the data owner): the output, from its share and party 0's."""
        if self.party != 1:
            raise ValueError("only party 1, the data owner, receives outputs")
        values = x.shares[0] + self.channel.recv(x.shape, 0)
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
