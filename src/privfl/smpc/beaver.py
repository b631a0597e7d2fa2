"""Pure share arithmetic of the interactive gates: Beaver products, AND gates, bit conversion.

Nothing here communicates; each function computes both parties' new shares from values
that were already opened and from the dealer's correlated randomness.

* Beaver multiplication (Beaver, "Efficient multiparty protocols using circuit
  randomization", CRYPTO 1991): for any bilinear map ``op`` over Z_2^64 (elementwise
  product, matrix product, convolution) and a dealer triple c = op(a, b), opening
  e = x - a and f = y - b lets the parties share op(x, y) = c + op(e, b) + op(a, f)
  + op(e, f), the public term added by party 0 only (Mohassel & Zhang, SecureML 2017,
  for matrix triples; the same identity holds for convolutions).
* AND gates on XOR-shared 64-bit words are the same identity over GF(2)^64 with a binary
  triple c = a & b: z = c ^ (d & b) ^ (e & a) ^ (d & e), with d = x ^ a, e = y ^ b opened.
* Bit conversion (binary to arithmetic sharing, as in ABY, Demmler, Schneider & Zohner,
  NDSS 2015, with a dealer bit r shared both ways): with c = b ^ r opened,
  b = c + r - 2 c r over the integers.
* The parallel-prefix (Kogge & Stone, IEEE Trans. Computers 1973) carry computation used to
  add two XOR-shared words, giving the most significant bit of x_0 + x_1 mod 2^64 with
  6 rounds of AND gates on packed words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from privfl.smpc.ring_conv import ring_conv2d
from privfl.smpc.ring_matmul import RingMatmul, int64_matmul


@dataclass(frozen=True)
class BilinearOp:
    """A bilinear map over Z_2^64: "mul" (broadcasting product), "matmul" or "conv2d"."""

    kind: str
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.kind not in ("mul", "matmul", "conv2d"):
            raise ValueError(f"unknown bilinear op {self.kind!r}")

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, matmul: RingMatmul = int64_matmul
    ) -> torch.Tensor:
        """Apply the map to int64 tensors (leading batch dimensions broadcast)."""
        if self.kind == "mul":
            return x * y
        if self.kind == "matmul":
            return matmul(x, y)
        return ring_conv2d(x, y, self.stride, self.padding, matmul)


def beaver_product_shares(
    op: BilinearOp,
    e: torch.Tensor,
    f: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    matmul: RingMatmul,
) -> torch.Tensor:
    """Shares of op(x, y) from opened e = x - a, f = y - b and stacked shares of a, b, c.

    Party 0's public term op(e, f) is folded into op(e, b_0 + f) by bilinearity, so the
    two parties need two applications of ``op`` each instead of three.
    """
    b_plus = b.clone()
    b_plus[0] += f
    return c + op(e.unsqueeze(0), b_plus, matmul) + op(a, f.unsqueeze(0), matmul)


def beaver_and_shares(
    d: torch.Tensor, e: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """XOR shares of x & y from opened d = x ^ a, e = y ^ b and stacked shares of a, b, c."""
    z = c ^ (d & b) ^ (e & a)
    z[0] ^= d & e
    return z


def bit_to_arithmetic_shares(c: torch.Tensor, r_arith: torch.Tensor) -> torch.Tensor:
    """Arithmetic shares of b = c ^ r from the opened bit c and arithmetic shares of r."""
    z = r_arith - 2 * c * r_arith
    z[0] += c
    return z


class Word(Protocol):
    """A 64-bit word or a sharing of one: supports XOR and left shift."""

    def __xor__(self, other: Any) -> Any: ...

    def __lshift__(self, bits: int) -> Any: ...


W = TypeVar("W", bound=Word)


def kogge_stone_add(p: W, g: W, and_gates: Callable[[list[tuple[W, W]]], list[W]]) -> W:
    """The sum word u + v (mod 2^64), whose bit 63 is the sign, from p = u ^ v and g = u & v.

    ``p`` and ``g`` may be plaintext words or XOR sharings; ``and_gates`` evaluates a list
    of (left, right) pairs in one round and returns their ANDs. Six prefix levels
    (shifts 1, 2, 4, ..., 32) turn g into the carry-generate of every bit prefix, and the
    sum is p ^ (carries << 1). Exact for every pair of words: nothing is probabilistic.
    """
    prop, gen = p, g
    for level in range(6):
        shift = 1 << level
        if level < 5:
            gen_and, prop = and_gates([(prop, gen << shift), (prop, prop << shift)])
        else:
            (gen_and,) = and_gates([(prop, gen << shift)])
        gen = gen ^ gen_and
    return p ^ (gen << 1)
