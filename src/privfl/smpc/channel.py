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

Comparison bits travel packed eight to a byte (:meth:`Channel.exchange_bits`) instead of
one 64-bit word each.
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


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 int64 values as a uint8 tensor with eight bits a byte (numpy's packbits)."""
    return torch.from_numpy(np.packbits(bits.reshape(-1).to(torch.uint8).numpy()))


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: 0/1 int64 values of the given shape."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = np.unpackbits(packed.numpy())[:n].astype(np.int64)
    return torch.from_numpy(bits).reshape(shape)


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

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        """Send a tensor to rank ``dst`` (the receiver knows its shape and dtype)."""
        tensor = tensor.contiguous()
        dist.send(tensor, dst)
        self.sent[self.phase, dst] += tensor.numel() * tensor.element_size()

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

    def exchange_bits(self, bits: torch.Tensor, peer: int) -> torch.Tensor:
        """:meth:`exchange` for 0/1 values, sent packed eight to a byte."""
        return unpack_bits(self.exchange(pack_bits(bits), peer), bits.shape)

    def send_bits(self, bits: torch.Tensor, dst: int) -> None:
        """Send 0/1 values packed eight to a byte."""
        self.send(pack_bits(bits), dst)

    def recv_bits(self, shape: torch.Size | tuple[int, ...], src: int) -> torch.Tensor:
        """Receive 0/1 values sent by :meth:`send_bits`."""
        n = int(np.prod(shape, dtype=np.int64))
        return unpack_bits(self.recv(((n + 7) // 8,), src, torch.uint8), shape)

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
