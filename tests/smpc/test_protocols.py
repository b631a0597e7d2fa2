"""Secure operations against their plaintext counterparts.

Error bound for one fixed-point product: each encoding is within 2^-17 of its real value
and the truncation adds at most 2^-16, so |secure - exact| <= 2^-16 + 2^-17 (|x| + |y|)
+ 2^-34 per product term. Sums of K products add up K such errors. The tests use these
bounds with the actual sizes. Comparisons, ReLU, max and argmax are exact on ring values.
"""

import pytest
import torch

from privfl.smpc import (
    BinarySharedTensor,
    ChaChaPRG,
    OpeningKind,
    Session,
    SharedTensor,
    add_public,
    argmax_one_hot,
    conv2d,
    matmul,
    max_pool2d,
    maximum,
    msb,
    mul,
    mul_public,
    reconstruct,
    relu,
    share,
    truncate,
)
from privfl.smpc.beaver import bit_reverse_positions, carry_out
from privfl.smpc.channel import packed_size
from privfl.smpc.protocols import and_held, select
from privfl.smpc.shared import share_binary

ULP = 2.0**-16


def _decode(session, x):
    return session.encoder.decode(reconstruct(x))


def _bound(x, y, k=1):
    """Worst-case error of a k-term sum of products of values bounded by |x|, |y|."""
    return k * (ULP / 2 * (x + y) + (ULP / 2) ** 2) + ULP


def test_add_sub_and_public_ops():
    s = Session(seed=1)
    x, y = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    sx, sy = s.share_float(x), s.share_float(y)
    assert torch.allclose(_decode(s, sx + sy), x + y, atol=ULP)
    assert torch.allclose(_decode(s, sx - sy), x - y, atol=ULP)
    assert torch.allclose(_decode(s, add_public(s, sx, 2.5)), x + 2.5, atol=ULP)
    assert torch.allclose(_decode(s, mul_public(s, sx, -1.75)), -1.75 * x, atol=_bound(4, 1.75))


def test_mul_matmul_conv_within_fixed_point_bound():
    s = Session(seed=2)
    x, y = (
        torch.rand(200, dtype=torch.float64) * 8 - 4,
        torch.rand(200, dtype=torch.float64) * 8 - 4,
    )
    assert (
        (_decode(s, mul(s, s.share_float(x), s.share_float(y))) - x * y).abs() <= _bound(4, 4)
    ).all()
    a, b = (
        torch.rand(8, 30, dtype=torch.float64) - 0.5,
        torch.rand(30, 6, dtype=torch.float64) - 0.5,
    )
    out = _decode(s, matmul(s, s.share_float(a), s.share_float(b)))
    assert ((out - a @ b).abs() <= _bound(0.5, 0.5, k=30)).all()
    img, w = (
        torch.rand(2, 3, 7, 7, dtype=torch.float64),
        torch.rand(4, 3, 3, 3, dtype=torch.float64) - 0.5,
    )
    out = _decode(s, conv2d(s, s.share_float(img), s.share_float(w), (2, 2), (1, 1)))
    expected = torch.nn.functional.conv2d(img, w, stride=2, padding=1)
    assert ((out - expected).abs() <= _bound(1, 0.5, k=27)).all()


def test_msb_and_relu_are_exact_on_a_grid_of_ring_values():
    s = Session(seed=3)
    ring = torch.tensor(
        [0, 1, -1, 2, -2, 2**16, -(2**16), 2**62, -(2**62), 2**63 - 1, -(2**63), -(2**63) + 1],
        dtype=torch.int64,
    )
    ring = torch.cat([ring, torch.randint(-(2**63), 2**63 - 1, (500,))])
    shared = s.share_ring(ring)
    assert torch.equal(reconstruct(msb(s, shared)), (ring < 0).long())
    assert torch.equal(reconstruct(relu(s, shared)), torch.where(ring > 0, ring, 0))


def test_relu_exact_near_encoding_limits():
    s = Session(seed=4)
    limit = s.encoder.max_abs * (1 - 1e-12)
    x = torch.tensor([0.0, ULP, -ULP, 1.0, -1.0, limit, -limit, 1e6, -1e6], dtype=torch.float64)
    encoded = s.encoder.encode(x)
    out = reconstruct(relu(s, s.share_float(x)))
    assert torch.equal(out, torch.clamp(encoded, min=0))


def test_maximum_and_max_pool_match_torch():
    s = Session(seed=5)
    a = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    b = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    ea, eb = s.encoder.encode(a), s.encoder.encode(b)
    out = reconstruct(maximum(s, s.share_float(a), s.share_float(b)))
    assert torch.equal(out, torch.maximum(ea, eb))
    pooled = reconstruct(max_pool2d(s, s.share_float(a)))
    assert torch.equal(pooled, torch.nn.functional.max_pool2d(ea.double(), 2).long())


def test_argmax_one_hot_matches_torch_argmax_including_ties():
    s = Session(seed=6)
    logits = torch.randn(40, 10, dtype=torch.float64)
    logits[0] = 1.0  # all tied: torch picks index 0
    logits[1, 3] = logits[1, 7] = 9.0  # tie between 3 and 7: torch picks 3
    one_hot = reconstruct(argmax_one_hot(s, s.share_float(logits)))
    assert torch.equal(one_hot.argmax(dim=1), logits.argmax(dim=1))
    assert torch.equal(one_hot.sum(dim=1), torch.ones(40, dtype=torch.int64))


def test_relu_opens_only_masked_values():
    s = Session(seed=7)
    x = torch.randn(300, dtype=torch.float64)
    relu(s, s.share_float(x))
    kinds = [e.kind for e in s.log.entries]
    assert s.log.kinds() == {
        OpeningKind.AND_MASKED,
        OpeningKind.BIT_MASKED,
        OpeningKind.BEAVER_MASKED,
    }
    # 7 AND rounds (the first on words each party holds alone: each opens its own, two
    # openings; then 6 carry-tree levels), then the masked sign bit and the masked value
    # open together in one round (select): 10 openings in 8 rounds.
    assert len(kinds) == 10
    assert kinds[:2] == [OpeningKind.AND_MASKED, OpeningKind.AND_MASKED]
    assert kinds[-2:] == [OpeningKind.BIT_MASKED, OpeningKind.BEAVER_MASKED]
    assert s.traffic.rounds == 8
    masks = torch.cat([e.values for e in s.log.entries if e.kind is not OpeningKind.BIT_MASKED])
    assert (masks.abs() < 2**40).double().mean() < 1e-3


def test_shared_tensor_rejects_bad_shares():
    with pytest.raises(ValueError, match="two parties"):
        SharedTensor(torch.zeros(3, 4, dtype=torch.int64))


def test_carry_tree_gives_the_sign_of_plaintext_sums_exactly():
    # The pure circuit with plaintext AND gates: bit 63 of u, of v and of the carry into
    # bit 63 (the carry out of (u << 1) + (v << 1)) XOR to the sign of u + v mod 2^64.
    u = torch.cat([torch.randint(-(2**63), 2**63 - 1, (2000,)), torch.tensor([-1, -(2**63), 0])])
    v = torch.cat([torch.randint(-(2**63), 2**63 - 1, (2000,)), torch.tensor([1, -1, -(2**63)])])
    widths = []

    def and_with(left, rights, width):
        widths.append(width)
        return [left & right for right in rights]

    u_rev, v_rev = bit_reverse_positions(u << 1), bit_reverse_positions(v << 1)
    carry = carry_out(u_rev & v_rev, u_rev ^ v_rev, and_with)
    assert torch.equal(((u >> 63) & 1) ^ ((v >> 63) & 1) ^ carry, (u + v < 0).long())
    assert widths == [32, 16, 8, 4, 2, 1]


def test_bit_reversed_positions_move_bit_i_to_its_reversed_index():
    words = torch.cat([torch.randint(-(2**63), 2**63 - 1, (500,)), torch.tensor([-1, 1, -(2**63)])])
    bits = (words.unsqueeze(1) >> torch.arange(64)) & 1
    moved = (bit_reverse_positions(words).unsqueeze(1) >> torch.arange(64)) & 1
    reversed_index = [int(f"{i:06b}"[::-1], 2) for i in range(64)]
    assert torch.equal(moved[:, reversed_index], bits)


def test_select_multiplies_by_a_shared_bit_in_one_round():
    s = Session(seed=11)
    prg = ChaChaPRG(seed=12)
    x = prg.ring((4, 3, 5))
    bits = prg.bits((4, 3, 1))
    shared_bits = share_binary(bits, prg)
    for flip, expected in ((False, x * bits), (True, x * (1 - bits))):
        rounds, online = s.traffic.rounds, s.traffic.online_bytes
        out = select(s, shared_bits, share(x, prg), flip=flip)
        assert torch.equal(reconstruct(out), expected)
        assert s.traffic.rounds == rounds + 1  # the masked bit and value travel together
        assert s.traffic.online_bytes - online == 2 * (packed_size(12, 1) + 8 * x.numel())
    kinds = [entry.kind for entry in s.log.entries]
    assert kinds == [OpeningKind.BIT_MASKED, OpeningKind.BEAVER_MASKED] * 2


def test_and_of_words_each_party_holds_alone_sends_one_word_each_way():
    s = Session(seed=13)
    prg = ChaChaPRG(seed=14)
    u, v = prg.ring((50,)), prg.ring((50,))
    zeros = torch.zeros_like(u)
    held_u = BinarySharedTensor(torch.stack([u, zeros]))  # party 0's alone
    held_v = BinarySharedTensor(torch.stack([zeros, v]))  # party 1's alone
    out = and_held(s, held_u, held_v)
    assert torch.equal(reconstruct(out), u & v)
    assert (s.traffic.rounds, s.traffic.online_bytes) == (1, 2 * 8 * 50)
    # dealt: a to party 0 only, b to party 1 only, c = a & b to both
    assert s.traffic.offline_bytes == 4 * 8 * 50
    assert [entry.kind for entry in s.log.entries] == [OpeningKind.AND_MASKED] * 2


def test_one_party_layouts_evolve_as_the_stacked_shares_do():
    """A party process holds only its own share (parties (0,) or (1,)); local steps on it
    (public terms for party 0 only, each party's own truncation) must give that party's
    row of the one-process result."""
    s = Session(seed=15)
    x = s.share_float(torch.randn(20, dtype=torch.float64))
    steps = [
        lambda y: add_public(s, y, 2.5),
        lambda y: mul_public(s, y, -1.25),
        lambda y: truncate(s, y),
    ]
    for step in steps:
        both = step(x)
        for party in (0, 1):
            alone = step(SharedTensor(x.shares[party : party + 1], (party,)))
            assert alone.parties == (party,)
            assert torch.equal(alone.shares[0], both.shares[party])
    with pytest.raises(ValueError, match="parties"):
        SharedTensor(x.shares, (1,))
