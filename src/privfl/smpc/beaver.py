"""Pure share arithmetic of the interactive gates: Beaver products, AND gates, bit conversion.

Nothing here communicates; each function computes both parties' new shares from values
that were already opened and from the dealer's correlated randomness.

* Beaver multiplication (Beaver, "Efficient multiparty protocols using circuit
  randomization", CRYPTO 1991): for any bilinear map ``op`` over Z_2^64 (elementwise
  product, matrix product, convolution) and a dealer triple c = op(a, b), opening
  e = x - a and f = y - b lets the parties share op(x, y) = c + op(e, b) + op(a, f)
  + op(e, f), the public term added by party 0 only (Mohassel & Zhang, SecureML 2017,
  for matrix triples; the same identity holds for convolutions).
* Fixed operand (Mohassel & Zhang, SecureML 2017, section 4.2, where the masked data
  matrix is reused across training iterations): when y is a weight used in every batch,
  its mask b is drawn once and f = y - b is opened once; each batch then takes a triple
  (a, c = op(a, b)) with a fresh a and opens only e = x - a. Then op(x, y) = c + op(a, f)
  + op(e, y), with no public term. Sound because b masks only y, and only once: every
  other opened value is masked by a fresh a, and c's shares are fresh.
* AND gates on XOR-shared 64-bit words are the same identity over GF(2)^64 with a binary
  triple c = a & b: z = c ^ (d & b) ^ (e & a) ^ (d & e), with d = x ^ a, e = y ^ b opened.
  Where party 0 alone holds x and party 1 alone holds y (the carry's first level, on
  each party's own share), the dealer gives a to party 0 only and b to party 1 only
  (c shared): party 0 knows d and sends it, party 1 sends e, one word each way instead
  of two; the same formula gives the shares, the absent shares of a and b being 0.
* Bit conversion (binary to arithmetic sharing, as in ABY, Demmler, Schneider & Zohner,
  NDSS 2015, with a dealer bit r shared both ways): with c = b ^ r opened,
  b = c + r - 2 c r over the integers.
* Bit times value in one round (ABY's bit-to-arithmetic conversion and a Beaver product
  fused, as the "bit injection" of ABY2.0, Patra et al., USENIX Security 2021, computes
  b·x for a XOR-shared bit b from preprocessed correlations): with the
  dealer's bit r (XOR- and additively shared), a uniform a and a·r shared, opening
  c = b ^ r and e = x - a together gives x·b = c·x + (1 - 2c)(e·r + a·r), linear in
  the shares. ReLU and the argmax's selections take one round and 65 bits an element
  instead of two rounds and 129 bits.
* The sign of x = x_0 + x_1 mod 2^64 is bit 63 of x_0, of x_1 and of the carry into bit 63,
  XORed. That carry is the carry out of (x_0 << 1) + (x_1 << 1), found by a binary tree
  over the bit positions (the carry-lookahead tree of Brent & Kung, IEEE Trans. Computers
  1982, reduced to its root): each level pairs neighbouring blocks (lo, hi) into
  G = G_hi ^ (P_hi & G_lo), P = P_hi & P_lo, halving the bits, so 6 levels of AND gates
  on 32, 16, ..., 1 bits open 188 bits an element where a full Kogge-Stone adder (what
  CrypTen runs) opens 22 words. With the bits in bit-reversed positions
  (:func:`bit_reverse_positions`) every level's bits lie in the low bits of a word, in
  order, so a level is a shift and its bits travel packed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    first: int | None = 0,
) -> torch.Tensor:
    """Shares of op(x, y) from opened e = x - a, f = y - b and stacked shares of a, b, c.

    Party 0's public term op(e, f) is folded into op(e, b_0 + f) by bilinearity, so the
    two parties need two applications of ``op`` each instead of three. ``first`` is the
    slot of party 0's share on dimension 0 (None where only party 1's share is held).
    """
    b_plus = b
    if first is not None:
        b_plus = b.clone()
        b_plus[first] += f
    return c + op(e.unsqueeze(0), b_plus, matmul) + op(a, f.unsqueeze(0), matmul)


def fixed_operand_product_shares(
    op: BilinearOp,
    e: torch.Tensor,
    f: torch.Tensor,
    a: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    matmul: RingMatmul,
) -> torch.Tensor:
    """Shares of op(x, y) from opened e = x - a, the once-opened f = y - b, and stacked
    shares of a, y and c = op(a, b): c + op(a, f) + op(e, y), no public term."""
    return c + op(a, f.unsqueeze(0), matmul) + op(e.unsqueeze(0), y, matmul)


def beaver_and_shares(
    d: torch.Tensor,
    e: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    first: int | None = 0,
) -> torch.Tensor:
    """XOR shares of x & y from opened d = x ^ a, e = y ^ b and stacked shares of a, b, c
    (``first`` as in :func:`beaver_product_shares`).

    x may have fewer dimensions than y (it broadcasts against y's leading dimensions)."""
    a = a.reshape(a.shape[0], *[1] * (e.dim() - d.dim()), *d.shape)
    z = c ^ (d & b) ^ (e & a)
    if first is not None:
        z[first] ^= d & e
    return z


def bit_to_arithmetic_shares(
    c: torch.Tensor, r_arith: torch.Tensor, first: int | None = 0
) -> torch.Tensor:
    """Arithmetic shares of b = c ^ r from the opened bit c and arithmetic shares of r
    (``first`` as in :func:`beaver_product_shares`)."""
    z = r_arith - 2 * c * r_arith
    if first is not None:
        z[first] += c
    return z


def bit_product_shares(
    c: torch.Tensor, e: torch.Tensor, x: torch.Tensor, r_arith: torch.Tensor, ar: torch.Tensor
) -> torch.Tensor:
    """Shares of x·b for a bit b = c ^ r from the opened c (0/1, broadcasting against x),
    the opened e = x - a, and stacked shares of x, of r (arithmetic, c's shape) and of
    a·r: c·x + (1 - 2c)(e·r + a·r). Linear in the shares: no public term."""
    return c * x + (1 - 2 * c) * (e * r_arith + ar)


_INDEX_SWAPS = (  # (distance, mask) swapping index bits 0 and 5, 1 and 4, 2 and 3
    (31, 0x00000000AAAAAAAA),
    (14, 0x0000CCCC0000CCCC),
    (4, 0x00F000F000F000F0),
)


def bit_reverse_positions(words: torch.Tensor) -> torch.Tensor:
    """Each word with bit i moved to bit rev(i), where rev reverses the 6 binary digits
    of the position (the bit-reversal permutation, three delta swaps of index digits,
    Knuth TAOCP 7.1.3). A bit permutation, so it applies to each XOR share alike. On
    shape-only (meta) tensors, when the dealer's work is planned, it returns ``words``:
    the shape is all that matters there, and torch's meta kernels are slow."""
    if words.is_meta:
        return words
    for distance, mask in _INDEX_SWAPS:  # masks lie below 64 - distance: no sign bits
        t = ((words >> distance) ^ words) & mask
        words = words ^ t ^ (t << distance)
    return words


AndWith = Callable[[torch.Tensor, list[torch.Tensor], int], list[torch.Tensor]]


def carry_out(g: torch.Tensor, p: torch.Tensor, and_with: AndWith) -> torch.Tensor:
    """The carry out of u + v (0 or 1 in bit 0; higher bits to be ignored) from the
    words g = u & v and p = u ^ v with their bits in bit-reversed positions
    (:func:`bit_reverse_positions`).

    ``g`` and ``p`` are plaintext words or stacked XOR shares (any leading dimensions);
    ``and_with(left, rights, width)`` returns ``[left & right for right in rights]`` on
    the low ``width`` bits, all in one round. Six rounds; exact for every pair of words.
    In that order the even bit positions (the low block of each pair) are the low
    half of the word and the odd ones the high half, in the same order, and the block
    made of positions 2j and 2j + 1 lands where position j of the next level belongs:
    each level is a shift, with no bit shuffling.
    """
    width = 64
    while width > 1:
        width //= 2
        g_hi, p_hi = g >> width, p >> width
        if width > 1:
            hi_and_g, p = and_with(p_hi, [g, p], width)
        else:  # the root: the block's propagate bit is not needed
            (hi_and_g,) = and_with(p_hi, [g], width)
        g = g_hi ^ hi_and_g
    return g & 1
