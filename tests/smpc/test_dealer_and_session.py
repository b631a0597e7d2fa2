"""Dealer material, the offline plan, the single opening point and traffic counting."""

import pytest
import torch

from privfl.smpc import BilinearOp, OpeningKind, Session, mul, reconstruct
from privfl.smpc.ring_conv import ring_conv2d


def test_elementwise_matmul_and_conv_triples_are_correct():
    dealer = Session(seed=1).dealer
    a, b, c = dealer.triple(BilinearOp("mul"), torch.Size([50]), torch.Size([50]))
    assert torch.equal(reconstruct(c), reconstruct(a) * reconstruct(b))
    a, b, c = dealer.triple(BilinearOp("matmul"), torch.Size([6, 40]), torch.Size([40, 3]))
    assert torch.equal(reconstruct(c), reconstruct(a) @ reconstruct(b))
    op = BilinearOp("conv2d", (1, 1), (1, 1))
    a, b, c = dealer.triple(op, torch.Size([2, 3, 6, 6]), torch.Size([4, 3, 3, 3]))
    assert torch.equal(reconstruct(c), ring_conv2d(reconstruct(a), reconstruct(b), padding=(1, 1)))


def test_limb_dealer_matrix_triple_is_correct():
    dealer = Session(seed=2, matmul_method="limb").dealer
    a, b, c = dealer.triple(BilinearOp("matmul"), torch.Size([7, 600]), torch.Size([600, 5]))
    assert torch.equal(reconstruct(c), torch.matmul(reconstruct(a), reconstruct(b)))


def test_binary_triple_and_random_bit():
    dealer = Session(seed=3).dealer
    a, b, c = dealer.binary_triple(torch.Size([1000]))
    assert torch.equal(reconstruct(c), reconstruct(a) & reconstruct(b))
    r_bin, r_arith = dealer.random_bit(torch.Size([1000]))
    assert torch.equal(reconstruct(r_bin), reconstruct(r_arith))
    assert set(reconstruct(r_bin).unique().tolist()) == {0, 1}


def test_dealer_counts_offline_bytes():
    session = Session(seed=4)
    session.dealer.triple(BilinearOp("mul"), torch.Size([10]), torch.Size([10]))
    # a, b, c: two shares of 10 int64 values each.
    assert session.traffic.offline_bytes == 3 * 2 * 8 * 10
    assert session.traffic.online_bytes == 0


def test_opening_counts_bytes_and_logs_values():
    session = Session(seed=5)
    x = session.share_float(torch.ones(3, 4))
    opened = session.open(x, OpeningKind.OUTPUT)
    assert torch.equal(opened, torch.full((3, 4), 2**16))
    assert session.traffic.online_bytes == 2 * 8 * 12
    assert session.traffic.rounds == 1
    (entry,) = session.log.entries
    assert entry.kind is OpeningKind.OUTPUT
    assert entry.shape == (3, 4)
    assert torch.equal(entry.values, opened)


def _square(session, x):
    return mul(session, x, x)


def test_two_phase_run_precomputes_everything_and_matches_on_demand():
    session = Session(seed=6)
    x = session.share_float(torch.linspace(-3, 3, 20))
    requests = session.plan(_square, x)
    assert [r.kind for r in requests] == ["triple"]
    assert session.log.entries == []  # planning opens nothing real
    result, times = session.run_two_phase(_square, x)
    assert session.dealer.pending() == 0
    assert times.offline_s > 0
    assert times.online_s > 0
    decoded = session.encoder.decode(reconstruct(result))
    assert torch.allclose(decoded, torch.linspace(-3, 3, 20, dtype=torch.float64) ** 2, atol=1e-4)


def test_online_phase_that_diverges_from_the_plan_fails():
    session = Session(seed=7)
    x = session.share_float(torch.ones(4))
    session.dealer.precompute(session.plan(_square, x))
    with pytest.raises(RuntimeError, match="offline plan"):
        _square(session, session.share_float(torch.ones(5)))
