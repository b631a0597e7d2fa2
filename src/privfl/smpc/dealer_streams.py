"""The dealer's correlated randomness split into what a party can draw and what is sent.

Every piece of material (:class:`~privfl.smpc.dealer.Request`) is a list of components,
each shared between the two compute parties: a Beaver triple is (a, b, c = op(a, b)), a
binary triple (a, b, c = a & b), a random bit (r as XOR-shared 0/1, r as ring element).
Any share that is uniform on its own can come from a pseudo-random stream instead of the
wire. So the dealer agrees one ChaCha20 key with each compute party; party 0 draws all of
its shares from its stream, party 1 draws the shares of the free components (a, b, the
bit r) from its stream, and only party 1's share of each dependent component is sent:

    c_1 = op(a_0 + a_1, b_0 + b_1) - c_0

A fixed mask (a request of kind "mask") has no dependent component: both shares are
drawn and nothing travels; the dealer keeps the mask for the triples that name it,
which then have two components, (a, c = op(a, b)). The AND triple of two words that
each party holds alone (a request of kind "held_and") has a component that party 0 alone
holds and one that party 1 alone holds: only its holder draws it, the other's share is
zero and nothing of it travels. Bit fields (comparison bits and the
AND triples of the comparison circuit) use only the low ``width`` bits of each word,
and only those travel, packed.

CrypTen's trusted third party splits its material the same way (Knott et al.,
"CrypTen: Secure Multi-Party Computation Meets Machine Learning", NeurIPS 2021). Each
party's shares are still uniform given its own view, so nothing changes for security;
the dealer's bytes drop from both shares of every component to party 1's share of the
dependent ones.

Pure functions only; :mod:`privfl.smpc.distributed` moves the tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from privfl.smpc.dealer import Request
from privfl.smpc.ring_matmul import RingMatmul


@dataclass(frozen=True)
class Component:
    """One shared value of a piece of material: ring words or 0/1 bits, whether it
    depends on the others (then party 1's share is a correction the dealer sends), and
    how many low bits of each word are used (what travels when it is sent packed)."""

    kind: str  # "ring" or "bits"
    shape: tuple[int, ...]
    dependent: bool = False
    width: int = 64
    holder: int | None = None
    """The one party that holds this value (the other's share is 0, neither drawn nor
    sent), or None where both hold shares."""


Draw = Callable[[Component], torch.Tensor]


@functools.cache
def components(request: Request) -> tuple[Component, ...]:
    """The components of ``request`` in the order both sides draw them (cached: every
    batch of a shape makes the same requests, and the shapes come from meta kernels)."""
    return tuple(_components(request))


def _components(request: Request) -> list[Component]:
    meta = [torch.empty(s, dtype=torch.int64, device="meta") for s in request.shapes]
    if request.kind == "triple":
        assert request.op is not None
        c = Component("ring", tuple(request.op(meta[0], meta[1]).shape), dependent=True)
        if request.fixed is not None:
            return [Component("ring", request.shapes[0]), c]
        return [Component("ring", request.shapes[0]), Component("ring", request.shapes[1]), c]
    if request.kind == "mask":
        return [Component("ring", request.shapes[0])]
    if request.kind == "held_and":
        shape = request.shapes[0]
        return [
            Component("ring", shape, holder=0),
            Component("ring", shape, holder=1),
            Component("ring", shape, dependent=True),
        ]
    if request.kind == "binary_triple":
        c_shape = tuple(torch.broadcast_shapes(meta[0].shape, meta[1].shape))
        return [
            Component("ring", request.shapes[0], width=request.width),
            Component("ring", request.shapes[1], width=request.width),
            Component("ring", c_shape, dependent=True, width=request.width),
        ]
    shape = request.shapes[0]
    bit = [Component("bits", shape, width=1), Component("ring", shape, dependent=True)]
    if request.kind == "bit_product":
        x_shape = request.shapes[1]
        return [*bit, Component("ring", x_shape), Component("ring", x_shape, dependent=True)]
    return bit


def deal(
    request: Request,
    draw0: Draw,
    draw1: Draw,
    matmul: RingMatmul,
    fixed: dict[str, torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both parties' shares of ``request``'s components, dealt from two streams.

    ``draw0`` and ``draw1`` draw from the streams of party 0 and party 1. Party 0's shares
    are all drawn; party 1's free shares are drawn and its dependent shares are computed
    from the secrets. ``fixed`` holds the masks kept by name (a
    "mask" request adds one). Returns (party 0's shares, party 1's shares).
    """
    parts = components(request)
    shares0 = [_zeros(part) if part.holder == 1 else draw0(part) for part in parts]
    shares1 = [
        _zeros(part) if part.holder == 0 else draw1(part) for part in parts if not part.dependent
    ]
    if request.kind == "mask":
        assert request.fixed is not None
        fixed[request.fixed] = shares0[0] + shares1[0]
    elif request.kind == "triple" and request.fixed is not None:
        assert request.op is not None
        a = shares0[0] + shares1[0]
        shares1.append(request.op(a, fixed[request.fixed], matmul) - shares0[1])
    elif request.kind == "triple":
        assert request.op is not None
        a, b = shares0[0] + shares1[0], shares0[1] + shares1[1]
        shares1.append(request.op(a, b, matmul) - shares0[2])
    elif request.kind in ("binary_triple", "held_and"):
        a, b = shares0[0] ^ shares1[0], shares0[1] ^ shares1[1]
        shares1.append((a & b) ^ shares0[2])
    elif request.kind == "bit_product":
        bit, a = shares0[0] ^ shares1[0], shares0[2] + shares1[1]
        shares1 = [shares1[0], bit - shares0[1], shares1[1], a * bit - shares0[3]]
    else:
        bit = shares0[0] ^ shares1[0]
        shares1.append(bit - shares0[1])
    return shares0, shares1


def party_shares(request: Request, party: int, draw: Draw, receive: Draw) -> list[torch.Tensor]:
    """One party's shares of ``request``: drawn from its stream, dependent ones (party 1)
    received. :func:`deal` draws the same stream in the same order."""
    return [
        _zeros(part)
        if part.holder not in (None, party)
        else receive(part)
        if party == 1 and part.dependent
        else draw(part)
        for part in components(request)
    ]


def _zeros(part: Component) -> torch.Tensor:
    """The share of a party that does not hold ``part`` (see :attr:`Component.holder`)."""
    return torch.zeros(part.shape, dtype=torch.int64)
