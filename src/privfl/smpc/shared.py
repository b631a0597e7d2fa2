"""Two-party secret-shared tensors: arithmetic (mod 2^64) and XOR (bitwise) sharings.

A :class:`SharedTensor` holds x_0 and x_1 with x = x_0 + x_1 mod 2^64; a
:class:`BinarySharedTensor` holds w_0 and w_1 with w = w_0 XOR w_1 on 64-bit words. Both
parties' shares live stacked on dimension 0 of one int64 tensor because the two compute
parties are simulated in one process; an object knows its shares and nothing else (no
plaintext, no key). A compute party in its own process (:mod:`privfl.smpc.parties`) holds
only its own share: ``parties`` names whose shares dimension 0 holds, (0, 1) or just one,
and every local step acts on each share by the party it belongs to (only party 0 adds
public terms), so one implementation serves both without computing on absent shares.
Everything here is local: no method communicates, so none of them reveals anything.
Interactive operations live in :mod:`privfl.smpc.protocols`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from privfl.smpc.prg import ChaChaPRG

BOTH = (0, 1)
"""The layout of a one-process simulation: both parties' shares, party 0's first."""

Parties = tuple[int, ...]


def _check_shares(shares: torch.Tensor, parties: Parties) -> None:
    if parties not in (BOTH, (0,), (1,)):
        raise ValueError(f"parties must be (0, 1), (0,) or (1,), not {parties}")
    if shares.dtype != torch.int64 or shares.dim() < 1 or shares.shape[0] != len(parties):
        raise ValueError(
            "shares must be an int64 tensor with the two parties (or one party's own "
            f"share) on dimension 0, one for each of parties={parties}"
        )


def public_slot(parties: Parties) -> int | None:
    """Where party 0's share sits in a layout (it alone adds public terms), or None."""
    return parties.index(0) if 0 in parties else None


def own_shares(share: torch.Tensor, owner: int, parties: Parties) -> torch.Tensor:
    """Stacked shares of a value held whole by ``owner`` (the other party's share is 0)."""
    return torch.stack([share if p == owner else torch.zeros_like(share) for p in parties])


S = TypeVar("S", bound="_Shares")


class _Shares:
    """Shape handling common to both sharings: every view applies to both shares alike."""

    def __init__(self, shares: torch.Tensor, parties: Parties = BOTH) -> None:
        _check_shares(shares, parties)
        self.shares = shares
        self.parties = parties

    @property
    def shape(self) -> torch.Size:
        """Shape of the secret (the shares without the party dimension)."""
        return self.shares.shape[1:]

    def numel(self) -> int:
        """Number of secret elements."""
        return self.shape.numel()

    def _new(self: S, shares: torch.Tensor) -> S:
        return type(self)(shares, self.parties)

    def reshape(self: S, *shape: int) -> S:
        """Reshape the secret."""
        return self._new(self.shares.reshape(len(self.parties), *shape))

    def unsqueeze(self: S, dim: int) -> S:
        """Insert a dimension of size one (``dim`` counted on the secret, >= 0)."""
        return self._new(self.shares.unsqueeze(dim + 1))

    def __getitem__(self: S, index: object) -> S:
        if not isinstance(index, tuple):
            index = (index,)
        return self._new(self.shares[(slice(None), *index)])

    def to_meta(self: S) -> S:
        """Shape-only copy on torch's meta device, for planning the dealer's work."""
        return self._new(torch.empty_like(self.shares, device="meta"))

    @classmethod
    def cat(cls: type[S], parts: Sequence[S], dim: int = 0) -> S:
        """Concatenate sharings along secret dimension ``dim`` (>= 0)."""
        return cls(torch.cat([p.shares for p in parts], dim=dim + 1), parts[0].parties)


class SharedTensor(_Shares):
    """Additive sharing over Z_2^64: x = shares[0] + shares[1] (mod 2^64)."""

    def __add__(self, other: SharedTensor) -> SharedTensor:
        return SharedTensor(self.shares + other.shares, self.parties)

    def __sub__(self, other: SharedTensor) -> SharedTensor:
        return SharedTensor(self.shares - other.shares, self.parties)

    def __neg__(self) -> SharedTensor:
        return SharedTensor(-self.shares, self.parties)

    def add_public(self, value: torch.Tensor | int) -> SharedTensor:
        """Add a public ring value (broadcast): only party 0 adds it to its share."""
        value = torch.as_tensor(value, dtype=torch.int64, device=self.shares.device)
        shape = torch.broadcast_shapes(self.shape, value.shape)
        out = self.shares.expand(len(self.parties), *shape).clone()
        first = public_slot(self.parties)
        if first is not None:
            out[first] += value
        return SharedTensor(out, self.parties)

    def mul_public(self, value: torch.Tensor | int) -> SharedTensor:
        """Multiply by a public integer ring value (no fixed-point rescaling)."""
        return SharedTensor(self.shares * value, self.parties)

    def sum(self, dim: int) -> SharedTensor:
        """Sum over secret dimension ``dim`` (>= 0)."""
        return SharedTensor(self.shares.sum(dim=dim + 1), self.parties)


class BinarySharedTensor(_Shares):
    """XOR sharing of 64-bit words: w = shares[0] ^ shares[1]."""

    def __xor__(self, other: BinarySharedTensor) -> BinarySharedTensor:
        return BinarySharedTensor(self.shares ^ other.shares, self.parties)

    def __lshift__(self, bits: int) -> BinarySharedTensor:
        return BinarySharedTensor(self.shares << bits, self.parties)

    def bit(self, position: int) -> BinarySharedTensor:
        """XOR sharing of bit ``position`` of every word, as 0/1 words (local)."""
        return BinarySharedTensor((self.shares >> position) & 1, self.parties)


def share(x: torch.Tensor, prg: ChaChaPRG) -> SharedTensor:
    """Split int64 ring elements ``x`` into x_0 uniform and x_1 = x - x_0 (mod 2^64)."""
    if x.dtype != torch.int64:
        raise TypeError("share() takes int64 ring elements; encode reals with FixedPoint first")
    x0 = prg.ring(x.shape)
    return SharedTensor(torch.stack([x0, x - x0]))


def share_binary(w: torch.Tensor, prg: ChaChaPRG) -> BinarySharedTensor:
    """Split int64 words ``w`` into w_0 uniform and w_1 = w XOR w_0."""
    w0 = prg.ring(w.shape)
    return BinarySharedTensor(torch.stack([w0, w ^ w0]))


def reconstruct(x: SharedTensor | BinarySharedTensor) -> torch.Tensor:
    """Plaintext of a sharing. A pure function: protocols must open through the session log."""
    if isinstance(x, BinarySharedTensor):
        return x.shares[0] ^ x.shares[1]
    return x.shares[0] + x.shares[1]
