"""Interactive secure operations on shared tensors (orchestration of the pure gates).

Every function takes the :class:`~privfl.smpc.session.Session` first, asks its dealer for
correlated randomness, opens only masked values through
:meth:`~privfl.smpc.session.Session.open`, and computes new shares with the pure
formulas of :mod:`privfl.smpc.beaver`.

Fixed-point error: one product followed by truncation is off by at most 1 ulp (2^-f) from
the rounded product of the encodings, each encoding being within 2^-(f+1) of its real
value, except with the truncation failure probability stated in :mod:`privfl.smpc.ring`.
Comparisons (:func:`msb`, :func:`relu`, :func:`maximum`, :func:`argmax_one_hot`) are
exact on the ring elements: sign extraction computes the carry of x_0 + x_1 with a
binary circuit over XOR sharings (the binary-circuit route of ABY, Demmler et al., NDSS
2015, and of CrypTen, Knott et al., NeurIPS 2021; the carry tree of
:func:`~privfl.smpc.beaver.carry_out`), so msb(x) is the true sign bit for all of
Z_2^64. The tree's openings are bit fields that travel packed (``width`` below 64); its
first level ANDs words that each party holds alone (:func:`and_held`, one word each way).
ReLU and the argmax's selections multiply by the comparison bit in one round
(:func:`select`, 65 bits an element instead of a bit conversion and a Beaver product).

Weights used in every batch can have their Beaver mask fixed for a whole evaluation
(:func:`fix_operand`): their masked value is opened once instead of once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from privfl.smpc.beaver import (
    BilinearOp,
    beaver_and_shares,
    beaver_product_shares,
    bit_product_shares,
    bit_reverse_positions,
    bit_to_arithmetic_shares,
    carry_out,
    fixed_operand_product_shares,
)
from privfl.smpc.ring import truncate_shares
from privfl.smpc.session import Session
from privfl.smpc.shared import (
    BOTH,
    BinarySharedTensor,
    Parties,
    SharedTensor,
    own_shares,
    public_slot,
)
from privfl.smpc.traffic import OpeningKind

_ELEMENTWISE = BilinearOp("mul")
_MATMUL = BilinearOp("matmul")


class FixedOperand(SharedTensor):
    """A sharing of a weight y whose Beaver mask b is fixed for a whole evaluation:
    ``opened`` is f = y - b (public), ``name`` the name the dealer keeps b under.

    Its views (reshape, indexing) are plain sharings: only the whole weight has a mask.
    """

    def __init__(
        self, shares: torch.Tensor, opened: torch.Tensor, name: str, parties: Parties = BOTH
    ) -> None:
        super().__init__(shares, parties)
        self.opened = opened
        self.name = name

    def _new(self, shares: torch.Tensor) -> SharedTensor:  # type: ignore[override]
        return SharedTensor(shares, self.parties)

    def to_meta(self) -> FixedOperand:  # type: ignore[override]
        """Shape-only copy (same name), for planning the dealer's work."""
        meta = torch.empty_like(self.shares, device="meta")
        opened = torch.empty_like(self.opened, device="meta")
        return FixedOperand(meta, opened, self.name, self.parties)


def _open_together(
    session: Session,
    parts: Sequence[SharedTensor | BinarySharedTensor],
    kind: OpeningKind,
    width: int = 64,
) -> list[torch.Tensor]:
    """Open several sharings of one type in a single round; return them in their shapes."""
    flat = type(parts[0]).cat([p.reshape(-1) for p in parts], dim=0)
    opened = session.open(flat, kind, width)
    sizes = [p.numel() for p in parts]
    return [o.reshape(p.shape) for o, p in zip(opened.split(sizes), parts, strict=True)]


def beaver_apply(
    session: Session, op: BilinearOp, x: SharedTensor, y: SharedTensor
) -> SharedTensor:
    """Shares of op(x, y) for a bilinear ``op``, with no fixed-point rescaling.

    If y is a :class:`FixedOperand`, only x's masked value is opened."""
    if isinstance(y, FixedOperand):
        a, c = session.dealer.triple(op, x.shape, y.shape, fixed=y.name)
        (e,) = _open_together(session, [x - a], OpeningKind.BEAVER_MASKED)
        return SharedTensor(
            fixed_operand_product_shares(
                op, e, y.opened, a.shares, y.shares, c.shares, session.matmul
            ),
            x.parties,
        )
    a, b, c = session.dealer.triple(op, x.shape, y.shape)
    e, f = _open_together(session, [x - a, y - b], OpeningKind.BEAVER_MASKED)
    first = public_slot(x.parties)
    return SharedTensor(
        beaver_product_shares(op, e, f, a.shares, b.shares, c.shares, session.matmul, first),
        x.parties,
    )


def fix_operand(session: Session, y: SharedTensor, name: str) -> FixedOperand:
    """Fix the Beaver mask of a weight ``y`` for the rest of the session: the dealer draws
    b and keeps it as ``name``, and f = y - b is opened, once (SecureML's reuse of a
    masked matrix; see :mod:`privfl.smpc.beaver` for why it is sound)."""
    (b,) = session.dealer.fixed_mask(name, y.shape)
    (f,) = _open_together(session, [y - b], OpeningKind.BEAVER_MASKED)
    return FixedOperand(y.shares, f, name, y.parties)


def truncate(session: Session, x: SharedTensor) -> SharedTensor:
    """Divide by 2^f after a fixed-point product (local SecureML truncation)."""
    return SharedTensor(truncate_shares(x.shares, session.frac_bits, x.parties), x.parties)


def mul(session: Session, x: SharedTensor, y: SharedTensor) -> SharedTensor:
    """Fixed-point elementwise product (broadcasting) of two sharings."""
    return truncate(session, beaver_apply(session, _ELEMENTWISE, x, y))


def matmul(session: Session, x: SharedTensor, y: SharedTensor) -> SharedTensor:
    """Fixed-point matrix product x @ y of two sharings."""
    return truncate(session, beaver_apply(session, _MATMUL, x, y))


def conv2d(
    session: Session,
    x: SharedTensor,
    weight: SharedTensor,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> SharedTensor:
    """Fixed-point convolution of x (N, C, H, W) with weight (OUT, C, KH, KW).

    The triple is a convolution triple (c = conv(a, b)), so the opened mask has the size
    of the image, not of its im2col patch matrix.
    """
    op = BilinearOp("conv2d", stride, padding)
    return truncate(session, beaver_apply(session, op, x, weight))


def add_public(session: Session, x: SharedTensor, value: torch.Tensor | float) -> SharedTensor:
    """x + value for a public real ``value`` (encoded in fixed point)."""
    return x.add_public(session.encoder.encode(value))


def mul_public(session: Session, x: SharedTensor, value: torch.Tensor | float) -> SharedTensor:
    """x * value for a public real ``value``: local product, then truncation."""
    return truncate(session, x.mul_public(session.encoder.encode(value)))


def and_fields(
    session: Session, x: BinarySharedTensor, y: BinarySharedTensor, width: int = 64
) -> BinarySharedTensor:
    """x & y on the low ``width`` bits of each word (higher bits of the result are
    meaningless below 64), in one round; x broadcasts against y's leading dimensions.

    Whole words open as AND-masked values; narrower fields are uniform dealer bits XORed
    on and open as bit-masked values, packed."""
    a, b, c = session.dealer.binary_triple(x.shape, y.shape, width)
    if c.shares.is_meta:  # planning: c has the result's shape, and meta kernels are slow
        return c
    kind = OpeningKind.AND_MASKED if width == 64 else OpeningKind.BIT_MASKED
    d, e = _open_together(session, [x ^ a, y ^ b], kind, width)
    first = public_slot(x.parties)
    return BinarySharedTensor(
        beaver_and_shares(d, e, a.shares, b.shares, c.shares, first), x.parties
    )


def and_held(session: Session, u: BinarySharedTensor, v: BinarySharedTensor) -> BinarySharedTensor:
    """u & v where party 0 alone holds u and party 1 alone holds v (the other share is
    0), in one round: the AND triple's a is party 0's alone and b party 1's, so each
    party opens only its own masked word, to the other (one word an element each way,
    where :func:`and_fields` opens two)."""
    a, b, c = session.dealer.held_and(u.shape)
    if c.shares.is_meta:  # planning, as in and_fields
        return c
    d, e = session.open_held(u ^ a, v ^ b, OpeningKind.AND_MASKED)
    first = public_slot(u.parties)
    return BinarySharedTensor(
        beaver_and_shares(d, e, a.shares, b.shares, c.shares, first), u.parties
    )


def bit_to_arithmetic(session: Session, bit: BinarySharedTensor) -> SharedTensor:
    """Convert a XOR sharing of 0/1 words into an additive sharing of the same bits."""
    r_bin, r_arith = session.dealer.random_bit(bit.shape)
    (c,) = _open_together(session, [bit ^ r_bin], OpeningKind.BIT_MASKED, width=1)
    first = public_slot(bit.parties)
    return SharedTensor(bit_to_arithmetic_shares(c, r_arith.shares, first), bit.parties)


def select(
    session: Session, bit: BinarySharedTensor, x: SharedTensor, flip: bool = False
) -> SharedTensor:
    """x * b for a XOR sharing ``bit`` of 0/1 words b (1 - b with ``flip``) that
    broadcasts against x, in one round: the masked bit and the masked x are opened
    together (:func:`~privfl.smpc.beaver.bit_product_shares`)."""
    r_bin, r_arith, a, ar = session.dealer.bit_product(bit.shape, x.shape)
    c, e = session.open_many(
        [(bit ^ r_bin, OpeningKind.BIT_MASKED, 1), (x - a, OpeningKind.BEAVER_MASKED, 64)]
    )
    if flip:
        c = c ^ 1
    shares = bit_product_shares(c, e, x.shares, r_arith.shares, ar.shares)
    return SharedTensor(shares, x.parties)


def msb(session: Session, x: SharedTensor) -> SharedTensor:
    """Additive sharing of the sign bit of x (1 where x < 0 as a signed int64), exact."""
    return bit_to_arithmetic(session, sign_bit(session, x))


def sign_bit(session: Session, x: SharedTensor) -> BinarySharedTensor:
    """XOR sharing of the sign bit of x as 0/1 words, exact: bit 63 of x_0, of x_1 and
    of the carry of x_0 + x_1 into bit 63, XORed."""
    parties = x.parties
    words = bit_reverse_positions(x.shares << 1)  # each party's own share
    u = BinarySharedTensor(_held_by(words, 0, parties), parties)  # party 0's share
    v = BinarySharedTensor(_held_by(words, 1, parties), parties)  # party 1's share

    def and_with(left: torch.Tensor, rights: list[torch.Tensor], width: int) -> list[torch.Tensor]:
        both = BinarySharedTensor(torch.stack(rights, dim=1), parties)
        lefts = BinarySharedTensor(left, parties)
        return list(and_fields(session, lefts, both, width).shares.unbind(1))

    g = and_held(session, u, v)
    carry = carry_out(g.shares, (u ^ v).shares, and_with)
    return BinarySharedTensor(carry ^ ((x.shares >> 63) & 1), parties)


def _held_by(words: torch.Tensor, party: int, parties: Parties) -> torch.Tensor:
    """The stacked ``words`` with every slot but ``party``'s zeroed: a XOR sharing of the
    words that ``party`` holds alone."""
    if parties == (party,):
        return words
    keep = torch.tensor([p == party for p in parties], device=words.device)
    return words * keep.view(-1, *[1] * (words.dim() - 1))


def relu(session: Session, x: SharedTensor) -> SharedTensor:
    """max(x, 0) = x * (1 - msb(x)), exact up to the fixed-point encoding of x."""
    return select(session, sign_bit(session, x), x, flip=True)


def maximum(session: Session, x: SharedTensor, y: SharedTensor) -> SharedTensor:
    """Elementwise max(x, y) = y + relu(x - y)."""
    return y + relu(session, x - y)


def max_pool2d(session: Session, x: SharedTensor) -> SharedTensor:
    """2x2 max pooling with stride 2 of x (..., H, W); an odd last row or column is dropped."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    cols = maximum(session, x[..., 0::2], x[..., 1::2])
    return maximum(session, cols[..., 0::2, :], cols[..., 1::2, :])


def argmax_one_hot(session: Session, logits: SharedTensor) -> SharedTensor:
    """Shared one-hot (integer 0/1) of the argmax of each row of ``logits`` (N, K).

    A tournament of exact comparisons: each round pairs neighbouring candidates and keeps
    the larger value and its one-hot with one multiplication by the shared comparison bit.
    Ties keep the lower index, like ``torch.argmax``.
    """
    n, k = logits.shape
    eye = torch.eye(k, dtype=torch.int64, device=logits.shares.device).expand(n, k, k)
    candidates = SharedTensor.cat(
        [logits.unsqueeze(2), SharedTensor(own_shares(eye, 0, logits.parties), logits.parties)],
        dim=2,
    )  # (N, m, 1 + K): value, then one-hot
    while candidates.shape[1] > 1:
        m = candidates.shape[1]
        left, right = candidates[:, 0 : m - 1 : 2], candidates[:, 1:m:2]
        right_wins = sign_bit(session, left[:, :, 0] - right[:, :, 0])
        winners = left + select(session, right_wins.unsqueeze(2), right - left)
        if m % 2:
            winners = SharedTensor.cat([winners, candidates[:, m - 1 :]], dim=1)
        candidates = winners
    return candidates[:, 0, 1:]
