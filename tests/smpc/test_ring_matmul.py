"""The exact limb matmul and the int64 im2col convolution."""

import pytest
import torch

from privfl.smpc import ChaChaPRG, limb_matmul, max_exact_inner_dim
from privfl.smpc.ring_conv import ring_conv2d

EDGES = [-(2**63), 2**63 - 1, 0, -1]


def _with_edges(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    flat = x.view(-1)
    for i, v in enumerate(EDGES * 3):
        flat[i * 7 % flat.numel()] = v
    return x


@pytest.mark.parametrize("limb_bits", [16, 22])
def test_limb_matmul_is_bit_identical_to_int64_matmul(limb_bits):
    prg = ChaChaPRG(seed=limb_bits)
    a, b = _with_edges(prg.ring((37, 300))), _with_edges(prg.ring((300, 23)))
    assert torch.equal(limb_matmul(a, b, limb_bits), torch.matmul(a, b))


def test_limb_matmul_of_edge_values_only():
    edge = torch.tensor(EDGES, dtype=torch.int64)
    a = edge.repeat(4).reshape(4, 4)
    b = edge.reshape(4, 1).expand(4, 3).contiguous()
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


def test_limb_matmul_broadcasts_batch_dimensions():
    prg = ChaChaPRG(seed=2)
    a, b = prg.ring((2, 5, 9, 11)), prg.ring((1, 11, 4))
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))
    a, b = prg.ring((1, 9, 11)), prg.ring((2, 11, 4))
    assert torch.equal(limb_matmul(a, b), torch.matmul(a, b))


def test_limb_matmul_chunks_long_inner_dimension():
    # 26-bit limbs allow only K = 2 per exact float64 product: 7 forces four chunks.
    assert max_exact_inner_dim(26) == 2
    prg = ChaChaPRG(seed=3)
    a, b = _with_edges(prg.ring((6, 7))), prg.ring((7, 5))
    assert torch.equal(limb_matmul(a, b, 26), torch.matmul(a, b))


@pytest.mark.parametrize("limb_bits", [8, 16, 22, 26])
def test_max_exact_inner_dim_keeps_partial_sums_below_2_53(limb_bits):
    k = max_exact_inner_dim(limb_bits)
    limb_max = 2**limb_bits - 1
    assert k * limb_max**2 < 2**53 <= (k + 1) * limb_max**2


def test_ring_conv2d_matches_float_convolution_on_small_integers():
    x = torch.randint(-100, 100, (3, 2, 11, 9))
    w = torch.randint(-20, 20, (4, 2, 3, 5))
    expected = torch.nn.functional.conv2d(x.double(), w.double(), stride=(2, 1), padding=(1, 2))
    out = ring_conv2d(x, w, (2, 1), (1, 2))
    assert torch.equal(out, expected.long())


def test_ring_conv2d_limb_and_int64_agree_on_full_range():
    prg = ChaChaPRG(seed=9)
    x, w = prg.ring((2, 3, 8, 8)), prg.ring((5, 3, 3, 3))
    assert torch.equal(ring_conv2d(x, w, matmul=limb_matmul), ring_conv2d(x, w))
