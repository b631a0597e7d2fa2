"""Low-rank structured updates (Konečný et al. 2016): the math against its statements,
the bytes that cross, a real run, and the refused mixes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_compression import CountingExecutor

from privfl import ConfigError
from privfl.algorithms.low_rank import (
    coefficients,
    random_gaussian,
    reconstruct,
    sketch,
    subspace_rank,
    unbiased_error,
    unbiased_scale,
)
from privfl.algorithms.models import CNN, TwoNN
from privfl.builtin.low_rank import LowRank
from privfl.builtin.process_executor import ProcessExecutor
from privfl.cli.main import main
from privfl.seeding import torch_generator
from privfl.testing import ClearSum, tiny_federation

DRAWS = 2000


def _matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _gaussian(rows: int, k: int, seed: int) -> torch.Tensor:
    return random_gaussian(rows, k, torch.Generator().manual_seed(seed), torch.float64)


def _projected(h: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q`` and ``B`` as the server works them out from a client's sketch of ``h``."""
    gaussian = _gaussian(len(h), k, seed)
    return coefficients(sketch(h, gaussian), gaussian)


# --- The math ---------------------------------------------------------------------------


def test_the_projection_is_orthogonal_and_of_rank_at_most_k():
    h, k = _matrix(12, 30), 4
    q, b = _projected(h, k, seed=1)
    assert torch.allclose(q.mT @ q, torch.eye(k, dtype=torch.float64), atol=1e-12)
    # The columns of Q span A's, and the sketch A^T H gives the coefficients Q^T H.
    gaussian = _gaussian(12, k, seed=1)
    assert torch.allclose(q @ (q.mT @ gaussian), gaussian, atol=1e-12)
    assert torch.allclose(b, q.mT @ h, atol=1e-12)
    plain = reconstruct(b, q, 1.0)
    # What the projection leaves out is orthogonal to the subspace...
    assert (q.mT @ (h - plain)).abs().max() < 1e-12
    # ...so projecting again changes nothing, and the projection is never longer.
    again, coefficients_again = _projected(plain, k, seed=1)
    assert torch.allclose(reconstruct(coefficients_again, again, 1.0), plain, atol=1e-12)
    assert plain.norm() <= h.norm()
    assert int(torch.linalg.matrix_rank(plain)) == k  # H has rank 12 > k
    scaled = reconstruct(b, q, unbiased_scale(12, k))
    assert int(torch.linalg.matrix_rank(scaled)) == k
    assert torch.allclose(scaled, 3 * plain)


def test_the_scaled_reconstruction_is_unbiased_with_the_stated_error():
    rows, cols, k = 20, 6, 5
    h = _matrix(rows, cols)
    scale = unbiased_scale(rows, k)
    draws = torch.stack(
        [reconstruct(b, q, scale) for q, b in (_projected(h, k, s) for s in range(DRAWS))]
    )
    squared = ((draws - h) ** 2).sum(dim=(1, 2))
    # E||H' - H||^2 = (d1 / k - 1) ||H||^2; the mean of DRAWS squared errors is within 6
    # of its standard errors of that.
    expected = unbiased_error(rows, k) * float((h**2).sum())
    assert abs(float(squared.mean()) - expected) < 6 * float(squared.std()) / math.sqrt(DRAWS)
    # The mean of DRAWS independent estimates has E||mean - H||^2 = expected / DRAWS:
    # by Markov's inequality it exceeds 20 times that with probability under 5%.
    bound = 20 * expected / DRAWS
    assert float(((draws.mean(dim=0) - h) ** 2).sum()) < bound
    # The plain projection (c = 1) is biased: its mean is about (k / d1) H, far outside.
    plain_bias = float(((draws.mean(dim=0) / scale - h) ** 2).sum())
    assert plain_bias == pytest.approx((1 - k / rows) ** 2 * float((h**2).sum()), rel=0.05)
    assert plain_bias > 10 * bound


@pytest.mark.parametrize(
    ("rows", "rank", "k"), [(200, 0.1, 20), (10, 0.1, 1), (10, 0.01, 1), (200, 4, 4), (3, 8, 3)]
)
def test_the_rank_is_a_share_of_the_rows_or_a_whole_number(rows, rank, k):
    assert subspace_rank(rows, rank) == k


# --- The compressor ---------------------------------------------------------------------


def _compressor(shapes, **options) -> LowRank:
    compressor = LowRank(**options)
    compressor.setup(dimension=sum(math.prod(s) for s in shapes), seed=0, shapes=shapes)
    return compressor


def _encode(compressor: LowRank, update: torch.Tensor, seed: int) -> bytes:
    return compressor.encode(update, config={}, generator=torch_generator(seed, "c"), state={})


def test_decoded_updates_are_unbiased_and_biases_travel_exactly():
    shapes = [(8, 3), (8,), (4, 2, 1, 1), (4,)]  # a Linear, and a Conv2d as [4, 2]
    compressor = _compressor(shapes, rank=0.25)
    assert [(m.rows, m.cols, m.k) for m in compressor.matrices] == [(8, 3, 2), (4, 2, 1)]
    update = torch.randn(compressor.dimension, generator=torch.Generator().manual_seed(0))
    draws = DRAWS // 4  # each a message encoded and decoded
    decoded = torch.stack(
        [compressor.decode(_encode(compressor, update, s), config={}) for s in range(draws)]
    )
    biases = torch.tensor([*range(24, 32), *range(40, 44)])
    assert torch.equal(decoded[:, biases], update[biases].expand(draws, -1))
    # Each matrix's estimate has E||H' - H||^2 = (d1 / k - 1) ||H||^2 (3 for both):
    # their mean over the draws is within 20 times that over the draws (Markov, as above).
    expected = 3 * float((update**2).sum() - (update[biases] ** 2).sum())
    assert float(((decoded.mean(dim=0) - update) ** 2).sum()) < 20 * expected / draws
    conv = decoded[0, 32:40].view(4, 2)
    assert int(torch.linalg.matrix_rank(conv)) == 1


def test_the_plain_projection_keeps_the_norm_and_the_orthogonality():
    compressor = _compressor([(16, 10), (16,)], rank=4, unbiased=False)
    assert compressor.keeps_norm_bound
    assert not _compressor([(16, 10), (16,)], rank=4).keeps_norm_bound
    assert not _compressor(
        [(16, 10), (16,)], rank=4, unbiased=False, value_bits=16
    ).keeps_norm_bound
    update = torch.randn(176, generator=torch.Generator().manual_seed(2))
    data = _encode(compressor, update, seed=5)
    decoded = compressor.decode(data, config={})
    assert decoded.norm() <= update.norm() * (1 + 1e-6)
    (gaussian,) = compressor._gaussians(int.from_bytes(data[:8], "little"))
    q = torch.linalg.qr(gaussian).Q
    leftover = (update - decoded)[:160].view(16, 10)
    assert (q.mT @ leftover).abs().max() < 1e-5
    assert int(torch.linalg.matrix_rank(decoded[:160].view(16, 10))) == 4


@pytest.mark.parametrize(
    ("model", "rank", "ratio"), [(TwoNN, 0.1, 9.8), (TwoNN, 0.02, 43.8), (CNN, 0.1, 10.0)]
)
def test_the_bytes_are_the_seed_coefficients_and_full_values(model, rank, ratio):
    shapes = [tuple(p.shape) for p in model().parameters()]
    compressor = _compressor(shapes, rank=rank)
    update = torch.randn(compressor.dimension, generator=torch.Generator().manual_seed(0))
    data = _encode(compressor, update, seed=1)
    coefficients = sum(m.k * m.cols for m in compressor.matrices)
    full = sum(math.prod(s) for s in shapes if len(s) == 1)
    assert len(data) == compressor.encoded_size == 8 + 4 * coefficients + 4 * full
    assert 4 * compressor.dimension / len(data) == pytest.approx(ratio, rel=0.01)
    half = _compressor(shapes, rank=rank, value_bits=16)
    assert len(_encode(half, update, seed=1)) == 8 + 2 * coefficients + 4 * full


def test_a_stack_encodes_each_client_to_the_bytes_it_sends_alone():
    compressor = _compressor([(30, 20), (30,), (5, 30), (5,)], rank=0.2)
    updates = torch.randn(5, compressor.dimension, generator=torch.Generator().manual_seed(1))
    updates[2] *= 50
    alone = [_encode(compressor, row, seed=k) for k, row in enumerate(updates)]
    stacked = compressor.encode_all(
        updates,
        config={},
        generators=[torch_generator(k, "c") for k in range(5)],
        states=[{} for _ in range(5)],
    )
    assert stacked == alone
    assert len(set(alone)) == 5


def test_matrices_of_rank_at_least_their_rows_travel_in_full():
    compressor = _compressor([(3, 7), (3,), (40, 3), (40,)], rank=4)
    assert [(m.rows, m.k) for m in compressor.matrices] == [(40, 4)]
    update = torch.randn(compressor.dimension, generator=torch.Generator().manual_seed(3))
    decoded = compressor.decode(_encode(compressor, update, seed=0), config={})
    assert torch.equal(decoded[:24], update[:24])


@pytest.mark.parametrize("rank", [0, -1, 2.5, math.nan, math.inf, True, "4"])
def test_bad_ranks_are_refused_naming_the_option(rank):
    with pytest.raises(ConfigError) as caught:
        LowRank(rank=rank)
    assert caught.value.key == "rank"


def test_value_bits_other_than_32_or_16_are_refused():
    with pytest.raises(ConfigError) as caught:
        LowRank(value_bits=8)
    assert caught.value.key == "value_bits"


def test_setup_needs_the_parameter_shapes():
    with pytest.raises(ConfigError, match="parameter shapes"):
        LowRank().setup(dimension=10, seed=0)
    with pytest.raises(ConfigError, match="adding up to the update's 10"):
        LowRank().setup(dimension=10, seed=0, shapes=[(3, 3)])


def test_bytes_of_another_length_are_refused():
    compressor = _compressor([(8, 4), (8,)], rank=2)
    data = _encode(compressor, torch.ones(40), seed=0)
    with pytest.raises(ValueError, match="68 bytes, not the 72 of low-rank"):
        compressor.decode(data[:-4], config={})


# --- In a federation --------------------------------------------------------------------


def test_serial_and_stacked_clients_send_and_record_the_same_bytes():
    # The tiny model: a [2, 8] weight at k = 1, and 2 biases.
    expected = 8 + 8 * 4 + 2 * 4
    options = {"low-rank": {"rank": 0.5}}
    executor = CountingExecutor()
    serial = tiny_federation(executor=executor, compressor="low-rank", options=options)
    stacked = tiny_federation(executor="vectorized", compressor="low-rank", options=options)
    for fed in (serial, stacked):
        records = fed.run(3)
        assert [r.values["uplink_bytes"] for r in records] == [expected] * 3
        assert records[-1].metrics["accuracy"] > 0.8
    assert executor.sent == [[expected] * 4] * 3
    assert expected < 4 * serial.params.numel()


def test_worker_processes_get_the_compressor_as_set_up():
    options = {"low-rank": {"rank": 1}}
    with tiny_federation(
        executor=ProcessExecutor(workers=1), compressor="low-rank", options=options
    ) as fed:
        (record,) = fed.run(1)
    assert record.values["uplink_bytes"] == 8 + 8 * 4 + 2 * 4
    assert not record.rejected


def test_a_run_from_the_command_line_on_the_mnist_sample(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["run", "--model", "2nn", "--clients", "20", "--clients-per-round", "5"]
    argv += ["--rounds", "2", "--compressor", "low-rank", "--compress-rank", "0.1"]
    argv += ["--option", "low-rank.value_bits=16", "--quiet", "--run-dir", str(run_dir)]
    assert main(argv) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    # k = 20, 20 and 1 for the 2NN's [200, 784], [200, 200] and [10, 200] weights.
    coefficients, biases = 20 * 784 + 20 * 200 + 1 * 200, 200 + 200 + 10
    assert [r["uplink_bytes"] for r in history] == [8 + 2 * coefficients + 4 * biases] * 2
    assert history[-1]["accuracy"] > 0.5


# --- Composition with privacy -----------------------------------------------------------


def test_secure_aggregation_refuses_low_rank():
    with pytest.raises(ConfigError, match="reveals only the sum") as caught:
        tiny_federation(mechanisms=[ClearSum()], compressor="low-rank")
    assert caught.value.key == "compressor"


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore::privfl.UtilityWarning")
def test_central_dp_takes_only_the_plain_projection():
    clip = 0.01
    dp = {"dp": {"mode": "central", "noise_multiplier": 1e-6, "clip": clip}}
    with pytest.raises(ConfigError, match="low-rank with unbiased = false"):
        tiny_federation(mechanisms=["dp"], compressor="low-rank", options=dp)
    fed = tiny_federation(
        mechanisms=["dp"],
        compressor="low-rank",
        options={**dp, "low-rank": {"rank": 1, "unbiased": False}},
    )
    assert fed.compressor is not None
    assert fed.compressor.keeps_norm_bound
    before = fed.params.clone()
    fed.run(1)
    # Every client's decoded update has norm <= clip; the mean of 4 has norm <= clip.
    assert float((fed.params - before).norm()) <= clip * 1.0001
