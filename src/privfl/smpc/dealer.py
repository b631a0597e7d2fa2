"""The trusted dealer ("crypto provider"): correlated randomness for the online phase.

The dealer never sees a secret. It draws Beaver triples for bilinear maps, binary AND
triples and random bits shared both ways from its own ChaCha20 stream, and sends each
compute party its shares; those bytes are counted as offline traffic. A *fixed mask* is
the b of a weight's Beaver triples drawn once and kept by name for a whole evaluation
(:func:`privfl.smpc.protocols.fix_operand`): later triples for that weight are
(a, c = op(a, b)) with a fresh a and the kept b. Material can be
produced ahead of time (:meth:`Dealer.precompute`, fed by a plan recorded on meta tensors)
and is then consumed in the same order online; if nothing was precomputed, it is produced
on demand and its time is still counted as dealer (offline) time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from privfl.smpc.beaver import BilinearOp
from privfl.smpc.prg import ChaChaPRG
from privfl.smpc.ring_matmul import RingMatmul
from privfl.smpc.shared import (
    BOTH,
    BinarySharedTensor,
    Parties,
    SharedTensor,
    share,
    share_binary,
)
from privfl.smpc.traffic import Traffic

Material = tuple[SharedTensor | BinarySharedTensor, ...]


@dataclass(frozen=True)
class Request:
    """One piece of correlated randomness: its kind, the shapes it is for and the map."""

    kind: str  # "triple", "mask", "binary_triple", "held_and", "random_bit" or "bit_product"
    shapes: tuple[tuple[int, ...], ...]
    op: BilinearOp | None = None
    fixed: str | None = None
    """"mask": the name the mask is kept under; "triple": the kept mask used as b."""
    width: int = 64
    """"binary_triple": only the low ``width`` bits of each word are used."""


class Dealer:
    """Produces correlated randomness, on demand or ahead of time (offline phase)."""

    def __init__(self, prg: ChaChaPRG, traffic: Traffic, matmul: RingMatmul) -> None:
        self._prg = prg
        self._traffic = traffic
        self._matmul = matmul
        self._queue: deque[tuple[Request, Material]] = deque()
        self._fixed: dict[str, torch.Tensor] = {}  # kept masks by name
        self.seconds = 0.0  # time spent generating material

    def triple(
        self, op: BilinearOp, shape_x: torch.Size, shape_y: torch.Size, fixed: str | None = None
    ) -> Material:
        """Shared (a, b, c) with a, b uniform of the given shapes and c = op(a, b); with
        ``fixed``, shared (a, c) where b is the mask kept under that name."""
        return self._serve(Request("triple", (tuple(shape_x), tuple(shape_y)), op, fixed))

    def fixed_mask(self, name: str, shape: torch.Size) -> Material:
        """A uniform shared b, kept under ``name`` for later ``triple(..., fixed=name)``."""
        return self._serve(Request("mask", (tuple(shape),), fixed=name))

    def binary_triple(
        self, shape_x: torch.Size, shape_y: torch.Size | None = None, width: int = 64
    ) -> Material:
        """XOR-shared words (a, b, c) with a, b uniform and c = a & b (a broadcast against
        b of ``shape_y``, default ``shape_x``); only the low ``width`` bits are used."""
        shapes = (tuple(shape_x), tuple(shape_x if shape_y is None else shape_y))
        return self._serve(Request("binary_triple", shapes, width=width))

    def held_and(self, shape: torch.Size) -> Material:
        """An AND triple for words that each party holds alone: a uniform a that only
        party 0 holds (party 1's share is 0), a uniform b that only party 1 holds, and
        c = a & b XOR-shared."""
        return self._serve(Request("held_and", (tuple(shape),)))

    def random_bit(self, shape: torch.Size) -> Material:
        """A uniform bit r, XOR-shared as 0/1 words and additively shared over Z_2^64."""
        return self._serve(Request("random_bit", (tuple(shape),)))

    def bit_product(self, shape_bit: torch.Size, shape_x: torch.Size) -> Material:
        """A uniform bit r of ``shape_bit`` shared both ways (as :meth:`random_bit`), a
        uniform a of ``shape_x`` and a·r (r broadcast), shared: one bit-times-value
        product (:func:`privfl.smpc.beaver.bit_product_shares`)."""
        return self._serve(Request("bit_product", (tuple(shape_bit), tuple(shape_x))))

    def precompute(self, requests: Iterable[Request]) -> None:
        """Offline phase: generate material for ``requests`` now, to be served in order."""
        for request in requests:
            self._queue.append((request, self._generate(request)))

    def pending(self) -> int:
        """Number of precomputed pieces not yet consumed."""
        return len(self._queue)

    def _serve(self, request: Request) -> Material:
        if not self._queue:
            return self._generate(request)
        planned, material = self._queue.popleft()
        if planned != request:
            raise RuntimeError(
                f"online phase asked for {request} but the offline plan has {planned}"
            )
        return material

    def _generate(self, request: Request) -> Material:
        start = time.perf_counter()
        prg = self._prg
        if request.kind == "triple" and request.fixed is not None:
            assert request.op is not None
            a = prg.ring(request.shapes[0])
            c = request.op(a, self._fixed[request.fixed], self._matmul)
            material: Material = (share(a, prg), share(c, prg))
        elif request.kind == "triple":
            assert request.op is not None
            a = prg.ring(request.shapes[0])
            b = prg.ring(request.shapes[1])
            c = request.op(a, b, self._matmul)
            material = (share(a, prg), share(b, prg), share(c, prg))
        elif request.kind == "mask":
            assert request.fixed is not None
            b = prg.ring(request.shapes[0])
            self._fixed[request.fixed] = b
            material = (share(b, prg),)
        elif request.kind == "binary_triple":
            a = prg.ring(request.shapes[0])
            b = prg.ring(request.shapes[1])
            material = (share_binary(a, prg), share_binary(b, prg), share_binary(a & b, prg))
        elif request.kind == "held_and":
            a, b = prg.ring(request.shapes[0]), prg.ring(request.shapes[0])
            zeros = torch.zeros_like(a)
            held = (torch.stack([a, zeros]), torch.stack([zeros, b]))
            material = (*(BinarySharedTensor(h) for h in held), share_binary(a & b, prg))
            # each holder's word travels to it alone: the zero shares are not sent
            self._traffic.offline_bytes -= 2 * 8 * a.numel()
        else:
            r = prg.bits(request.shapes[0])
            r0 = prg.bits(request.shapes[0])
            material = (BinarySharedTensor(torch.stack([r0, r ^ r0])), share(r, prg))
            if request.kind == "bit_product":
                a = prg.ring(request.shapes[1])
                material = (*material, share(a, prg), share(a * r, prg))
        self._traffic.offline_bytes += sum(8 * m.shares.numel() for m in material)
        self.seconds += time.perf_counter() - start
        return material


class RecordingDealer(Dealer):
    """Planning stand-in: records each request and returns shape-only (meta) material."""

    def __init__(self, parties: Parties = BOTH) -> None:
        self.requests: list[Request] = []
        self.seconds = 0.0
        self._parties = parties  # the layout of the material, as the planning session's

    def _serve(self, request: Request) -> Material:
        self.requests.append(request)
        n, parties = len(self._parties), self._parties
        meta = [torch.empty(n, *s, dtype=torch.int64, device="meta") for s in request.shapes]
        if request.kind == "triple":
            assert request.op is not None
            c = SharedTensor(request.op(meta[0], meta[1]), parties)
            if request.fixed is not None:
                return (SharedTensor(meta[0], parties), c)
            return (SharedTensor(meta[0], parties), SharedTensor(meta[1], parties), c)
        if request.kind == "mask":
            return (SharedTensor(meta[0], parties),)
        if request.kind == "held_and":
            return tuple(BinarySharedTensor(meta[0], parties) for _ in range(3))
        if request.kind == "binary_triple":
            shape = torch.broadcast_shapes(*request.shapes)
            c = torch.empty(n, *shape, dtype=torch.int64, device="meta")
            a, b = (BinarySharedTensor(m, parties) for m in meta)
            return (a, b, BinarySharedTensor(c, parties))
        bit = (BinarySharedTensor(meta[0], parties), SharedTensor(meta[0], parties))
        if request.kind == "bit_product":
            return (*bit, SharedTensor(meta[1], parties), SharedTensor(meta[1], parties))
        return bit
