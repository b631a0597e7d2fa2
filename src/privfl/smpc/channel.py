"""Point-to-point messages between the SMPC parties over torch.distributed, with byte counts.

The three parties of :mod:`privfl.smpc.distributed` are the ranks of one
``torch.distributed`` process group (the gloo backend, TCP): rank 0 the model owner
(compute party 0), rank 1 the data owner (compute party 1), rank 2 the dealer. gloo is
the transport CrypTen's parties use and ships inside torch, so nothing here handles
sockets. Every message is a tensor sent with ``send``/``recv``; a :class:`Channel` counts
the payload bytes it sends and receives per phase (input, dealer, online, output), which
is what the byte figures in the docs are made of (gloo's own frame headers are not
counted).

gloo's TCP transport neither encrypts nor authenticates: across hosts run it inside a
private network or a tunnel (WireGuard, SSH), see the how-to on encrypted evaluation
across hosts.

Comparison bits travel packed (:meth:`Channel.exchange_many`): an opening of ``width``-bit
fields (the low bits of each word; 1 for a bit) costs ``width / 8`` bytes an element
instead of a whole 64-bit word.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from privfl.errors import ConfigError

MODEL_OWNER, DATA_OWNER, DEALER = 0, 1, 2
ROLES = {"model-owner": MODEL_OWNER, "data-owner": DATA_OWNER, "dealer": DEALER}
PHASES = ("setup", "input", "dealer", "online", "output")


FIELD_WIDTHS = (1, 2, 4, 8, 16, 32, 64)


def _check_width(width: int) -> None:
    if width not in FIELD_WIDTHS:
        raise ValueError(f"field width {width} is not one of {FIELD_WIDTHS}")


_LITTLE_ENDIAN = {8: "u1", 16: "<u2", 32: "<u4", 64: "<u8"}
_REVERSED_BYTE = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)


def pack_fields(words: torch.Tensor, width: int) -> torch.Tensor:
    """The low ``width`` bits of each int64 word, packed with no gaps into uint8 bytes
    (little-endian: ``8 // width`` fields a byte, or ``width // 8`` bytes a field)."""
    _check_width(width)
    flat = np.ascontiguousarray(words.reshape(-1).numpy()).view("<u8")
    if width >= 8:  # a cast to a narrower unsigned type keeps the low bits
        return torch.from_numpy(flat.astype(_LITTLE_ENDIAN[width]).view(np.uint8))
    low = flat.astype(np.uint8) & np.uint8((1 << width) - 1)
    if width == 1:
        return torch.from_numpy(np.packbits(low, bitorder="little"))
    # the fields of one byte, read as one little-endian word of 8 // width bytes: field
    # j sits at bit 8j and moves to bit j * width (fields below shift out of the byte)
    per_byte = 8 // width
    group = np.pad(low, (0, -len(low) % per_byte)).view(_LITTLE_ENDIAN[8 * per_byte])
    out = group.copy()
    for j in range(1, per_byte):
        out |= group >> group.dtype.type(j * (8 - width))
    return torch.from_numpy(out.astype(np.uint8))


def unpack_fields(
    packed: torch.Tensor, shape: torch.Size | tuple[int, ...], width: int
) -> torch.Tensor:
    """Inverse of :func:`pack_fields`: int64 words of ``shape`` (bits above ``width`` zero)."""
    _check_width(width)
    n = int(np.prod(shape, dtype=np.int64))
    raw = packed.reshape(-1).numpy()
    if width >= 8:
        words = raw.view(_LITTLE_ENDIAN[width]).astype(np.int64)
        return torch.from_numpy(words).reshape(shape)
    if width == 1:  # numpy's big-endian bit order on reversed bytes: the fastest path
        bits = np.unpackbits(_REVERSED_BYTE[raw], count=n)
        return torch.from_numpy(bits.astype(np.int64)).reshape(shape)
    per_byte = 8 // width
    fields = np.empty((len(raw), per_byte), dtype=np.uint8)
    for j in range(per_byte):
        fields[:, j] = (raw >> np.uint8(j * width)) & np.uint8((1 << width) - 1)
    return torch.from_numpy(fields.reshape(-1)[:n].astype(np.int64)).reshape(shape)


def packed_size(numel: int, width: int) -> int:
    """Bytes that :func:`pack_fields` makes of ``numel`` fields of ``width`` bits."""
    return numel * width // 8 if width >= 8 else -(-numel // (8 // width))


def init_parties(address: str, role: str, timeout_s: float) -> int:
    """Join the three-party process group at ``address`` (HOST:PORT) as ``role``; return the rank.

    The model owner (rank 0) listens at ``address``; the others connect to it. Every
    blocking call of the group fails after ``timeout_s`` seconds instead of hanging.
    """
    if role not in ROLES:
        raise ConfigError("role", role, f"one of {', '.join(ROLES)}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("address", address, "HOST:PORT, e.g. 127.0.0.1:29500")
    dist.init_process_group(
        backend="gloo",
        init_method=f"tcp://{address}",
        rank=ROLES[role],
        world_size=len(ROLES),
        timeout=timedelta(seconds=timeout_s),
    )
    return ROLES[role]


class Channel:
    """This party's sends and receives, counted in payload bytes per phase and peer.

    ``phase`` names the phase the next messages belong to; ``sent`` and ``received``
    map (phase, peer rank) to bytes.
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.phase = "setup"
        self.sent: Counter[tuple[str, int]] = Counter()
        self.received: Counter[tuple[str, int]] = Counter()
        self._in_flight: list[tuple[Any, torch.Tensor]] = []  # (work, tensor kept alive)

    def send(self, tensor: torch.Tensor, dst: int, wait: bool = True) -> None:
        """Send a tensor to rank ``dst`` (the receiver knows its shape and dtype); with
        ``wait=False`` return at once and let :meth:`flush` wait for it."""
        tensor = tensor.contiguous()
        if wait:
            dist.send(tensor, dst)
        else:
            self._in_flight.append((dist.isend(tensor, dst), tensor))
        self.sent[self.phase, dst] += tensor.numel() * tensor.element_size()

    def flush(self) -> None:
        """Wait until every send made with ``wait=False`` has been delivered."""
        for work, _ in self._in_flight:
            if work is not None:
                work.wait()
        self._in_flight.clear()

    def recv(
        self, shape: torch.Size | tuple[int, ...], src: int, dtype: Any = torch.int64
    ) -> torch.Tensor:
        """Receive a tensor of known shape and dtype from rank ``src``."""
        buffer = torch.empty(tuple(shape), dtype=dtype)
        dist.recv(buffer, src)
        self.received[self.phase, src] += buffer.numel() * buffer.element_size()
        return buffer

    def exchange(self, tensor: torch.Tensor, peer: int) -> torch.Tensor:
        """Send ``tensor`` to ``peer`` and receive the peer's tensor of the same shape."""
        tensor = tensor.contiguous()
        request = dist.isend(tensor, peer)
        other = self.recv(tensor.shape, peer, tensor.dtype)
        request.wait()
        self.sent[self.phase, peer] += tensor.numel() * tensor.element_size()
        return other

    def exchange_many(
        self, parts: list[torch.Tensor], widths: list[int], peer: int
    ) -> list[torch.Tensor]:
        """:meth:`exchange` of several int64 tensors in one message, each as the low
        ``width`` bits of its words, packed (64: whole words); returns the peer's parts."""
        if all(width == 64 for width in widths):
            flat = torch.cat([part.reshape(-1) for part in parts])
            sizes = [part.numel() for part in parts]
            other = self.exchange(flat, peer).split(sizes)
            return [o.reshape(p.shape) for o, p in zip(other, parts, strict=True)]
        packed = [pack_fields(part, width) for part, width in zip(parts, widths, strict=True)]
        other = self.exchange(torch.cat([p.reshape(-1) for p in packed]), peer)
        pieces = other.split([p.numel() for p in packed])
        return [
            unpack_fields(piece, part.shape, width)
            for piece, part, width in zip(pieces, parts, widths, strict=True)
        ]

    def send_fields(self, words: torch.Tensor, width: int, dst: int, wait: bool = True) -> None:
        """Send the low ``width`` bits of each word, packed (``wait`` as in :meth:`send`)."""
        self.send(pack_fields(words, width), dst, wait)

    def recv_fields(
        self, shape: torch.Size | tuple[int, ...], width: int, src: int
    ) -> torch.Tensor:
        """Receive words sent by :meth:`send_fields`."""
        n = packed_size(int(np.prod(shape, dtype=np.int64)), width)
        return unpack_fields(self.recv((n,), src, torch.uint8), shape, width)

    def send_json(self, value: Any, dst: int) -> None:
        """Send a JSON document (public metadata only: shapes, settings)."""
        payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
        self.send(torch.tensor([payload.numel()], dtype=torch.int64), dst)
        self.send(payload, dst)

    def recv_json(self, src: int) -> Any:
        """Receive a document sent by :meth:`send_json` (JSON, never pickle: the peer
        belongs to another organisation and must not be able to run code here)."""
        (size,) = self.recv((1,), src).tolist()
        return json.loads(bytes(self.recv((size,), src, torch.uint8).numpy()).decode())

    def send_key(self, key: bytes, dst: int) -> None:
        """Send a secret PRG key."""
        self.send(torch.frombuffer(bytearray(key), dtype=torch.uint8), dst)

    def recv_key(self, src: int, size: int = 32) -> bytes:
        """Receive a secret PRG key of ``size`` bytes."""
        return bytes(self.recv((size,), src, torch.uint8).numpy())

    def bytes_by_phase(self) -> dict[str, dict[str, int]]:
        """Bytes sent and received by this party in each phase, summed over peers."""
        return {
            phase: {
                "sent": sum(v for (p, _), v in self.sent.items() if p == phase),
                "received": sum(v for (p, _), v in self.received.items() if p == phase),
            }
            for phase in PHASES
        }
