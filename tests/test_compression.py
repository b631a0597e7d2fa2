"""Compression: the math against its papers, the bytes that cross, and the refused mixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from privfl import Compressor, ConfigError, hookimpl
from privfl.algorithms.bit_coding import (
    RICE_MAX_PARAMETER,
    index_bits,
    pack_bits,
    pack_index_set,
    packed_size,
    rice_decode,
    rice_encode,
    rice_parameter,
    unpack_bits,
    unpack_index_set,
)
from privfl.algorithms.compression import (
    RANDOM_BITS,
    densify,
    dequantize,
    error_feedback,
    max_quantize,
    nearest_quantize,
    qsgd_levels,
    qsgd_quantize,
    qsgd_variance_bound,
    random_bits,
    sparse_error_feedback,
    stochastic_quantize,
)
from privfl.algorithms.hadamard import (
    MIN_BLOCK,
    hadamard_blocks,
    random_signs,
    rotate,
    unrotate,
    walsh_hadamard,
)
from privfl.algorithms.random_mask import mask_rate, masked_values, random_mask
from privfl.algorithms.top_k import top_k
from privfl.builtin.compressors import QSGD, RandomMask, TopK
from privfl.builtin.executors import SerialExecutor
from privfl.builtin.process_executor import ProcessExecutor
from privfl.messages import tensor_bytes
from privfl.testing import ClearSum, tiny_federation

# --- QSGD (Alistarh et al. 2017) --------------------------------------------------------

DRAWS = 20_000


@pytest.mark.parametrize("bits", [2, 3, 5])
@pytest.mark.parametrize("quantize", [qsgd_quantize, max_quantize], ids=["norm", "max"])
def test_stochastic_quantization_is_unbiased(bits, quantize):
    v = torch.randn(1, 50, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    levels = qsgd_levels(bits)
    scales, codes = quantize(v.expand(DRAWS, -1), levels, torch.Generator().manual_seed(1))
    estimates = dequantize(scales, codes - levels, levels)
    # Each coordinate is one of two levels scale / s apart: its standard deviation is at
    # most scale / (2 s), and the mean of DRAWS draws is within 6 of them of v.
    tolerance = 6 * float(scales[0]) / (2 * levels) / math.sqrt(DRAWS)
    assert (estimates.mean(dim=0) - v[0]).abs().max() < tolerance
    assert int(codes.min()) >= 0
    assert int(codes.max()) <= 2 * levels


@pytest.mark.parametrize("bits", [2, 4])
def test_qsgd_error_is_within_lemma_3_1(bits):
    dim, levels = 400, qsgd_levels(bits)
    v = torch.randn(1, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    norms, codes = qsgd_quantize(v.expand(DRAWS, -1), levels, torch.Generator().manual_seed(2))
    error = ((dequantize(norms, codes - levels, levels) - v) ** 2).sum(dim=1).mean()
    bound = qsgd_variance_bound(dim, levels) * float((v**2).sum())
    assert error <= 1.02 * bound
    assert error > 0.01 * bound  # the estimate really is random


@pytest.mark.parametrize("quantize", [qsgd_quantize, max_quantize], ids=["norm", "max"])
def test_each_row_is_quantized_as_it_would_be_alone(quantize):
    # A row whose top / scale overflows float32 is scaled as value / scale * top, the
    # others as value * (top / scale): the two round differently now and then, and the
    # draws below turn every such difference into a different code. A client's codes
    # must not depend on the clients stacked with it.
    levels, dim = 7, 50_000
    top = np.float32(levels << RANDOM_BITS)
    rows = torch.randn(2, dim, generator=torch.Generator().manual_seed(0))
    rows[0] *= 1e-41  # subnormal: top / scale overflows
    scale = np.float32(quantize(rows[1:], levels, np.zeros((1, dim), np.uint16))[0][0])
    values = rows[1].numpy()
    multiplied = np.rint(values * np.float32(top / np.float64(scale))).astype(np.int64)
    divided = np.rint(values / scale * top).astype(np.int64)
    differ = multiplied != divided
    assert differ.any()  # a few of 50,000 (deterministic: the seed is fixed)
    draws = np.zeros((2, dim), np.uint16)
    higher = np.maximum(multiplied, divided)[differ] + int(top)
    draws[1, differ] = (2**RANDOM_BITS - higher % 2**RANDOM_BITS) % 2**RANDOM_BITS
    _, codes = quantize(rows, levels, draws)
    _, alone = quantize(rows[1:], levels, draws[1:])
    assert torch.equal(codes[1], alone[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_is_the_formula_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(0)
    levels = 7
    codes = torch.randint(0, 2 * levels + 1, (5, 300), generator=generator, dtype=torch.int32)
    scales = torch.cat(
        [
            torch.rand(3, generator=generator) * 10.0 ** torch.arange(-30, 30, 20),
            torch.tensor([0.0, float("inf")]),
        ]
    ).to(dtype)
    expected = scales[:, None] * ((codes - levels).to(dtype) / levels)
    for given, offset in ((codes - levels, 0), (codes, levels), (codes.to(torch.int64), levels)):
        got = dequantize(scales, given, levels, offset=offset)
        assert got.dtype == dtype
        assert torch.equal(got.view(torch.int8), expected.view(torch.int8))  # NaNs too


@pytest.mark.parametrize("magnitude", [1.0, 1e-35], ids=["normal", "tiny-scale"])
@pytest.mark.parametrize("bits", [2, 4, 16])
def test_stochastic_rounding_is_exactly_unbiased_on_its_fixed_point_grid(bits, magnitude):
    # Every one of the 2^16 random draws once: the codes' sum is exactly 2^16 times the
    # mean code, which must be s + y for y = s * x / scale on the 2^-16 grid: within
    # 2^-17 of a step of y and float32's rounding of y (2^-24 of it, twice).
    levels = qsgd_levels(bits)
    x = torch.randn(1, 40, generator=torch.Generator().manual_seed(bits)) * magnitude
    x[0, :3] = torch.tensor([0.0, -0.0, 1e-30 * magnitude])  # zeros stay at the middle code
    draws = np.arange(2**RANDOM_BITS, dtype=np.uint16)[:, None].repeat(40, axis=1)
    scale = x.abs().amax(dim=1)
    _, codes = stochastic_quantize(
        x.expand(len(draws), -1), scale.expand(len(draws)), levels, draws
    )
    total = codes.to(torch.int64).sum(dim=0)
    y = x[0].double() / float(scale) * levels
    scaled = (y + levels) * 2**RANDOM_BITS
    bound = 0.5 + y.abs() * 2**RANDOM_BITS * 2**-22
    assert bool(((total.double() - scaled).abs() <= bound).all())
    assert total.tolist()[:2] == [levels << RANDOM_BITS] * 2
    assert int(codes.min()) >= 0
    assert int(codes.max()) <= 2 * levels
    # A rounding that always went down would miss by up to a whole step.
    floor_total = torch.floor(scaled / 2**RANDOM_BITS) * 2**RANDOM_BITS
    assert not bool(((floor_total - scaled).abs() <= bound).all())


def test_after_a_rotation_max_scaling_is_far_less_noisy_than_the_norm():
    dim = 4096
    v = torch.randn(1, dim, generator=torch.Generator().manual_seed(0))
    rotated = rotate(v, random_signs(dim, 1))
    errors = {}
    for name, quantize in {"norm": qsgd_quantize, "max": max_quantize}.items():
        scales, codes = quantize(rotated.expand(200, -1), 1, torch.Generator().manual_seed(3))
        errors[name] = float(((dequantize(scales, codes - 1, 1) - rotated) ** 2).sum(1).mean())
    assert errors["max"] < errors["norm"] / 4


# --- Randomized Hadamard rotation (Suresh et al. 2017) ----------------------------------


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16, 32, 64, 128, 1024])
def test_walsh_hadamard_is_orthogonal_and_its_own_inverse(size):
    matrix = walsh_hadamard(torch.eye(size, dtype=torch.float64))
    assert torch.allclose(matrix @ matrix.T, torch.eye(size, dtype=torch.float64))
    assert set(matrix.abs().flatten().tolist()) == {1 / math.sqrt(size)}
    x = torch.randn(3, size, dtype=torch.float64)
    assert torch.allclose(walsh_hadamard(walsh_hadamard(x)), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_is_sylvesters_hadamard_matrix_on_each_block(dtype):
    # 1,200 coordinates pad to 1,216 = 1,024 + 128 + 64: the fast transform of each
    # block against the matrix product by Sylvester's Hadamard matrix (scipy).
    dim = 1200
    x = torch.randn(3, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    signs = random_signs(dim, 5).double()
    blocks = hadamard_blocks(dim)
    assert blocks == [1024, 128, 64]
    matrix = torch.from_numpy(
        scipy.linalg.block_diag(*(scipy.linalg.hadamard(b) / math.sqrt(b) for b in blocks))
    )
    padded = torch.cat([x * signs[:dim], torch.zeros(3, sum(blocks) - dim)], dim=1)
    expected = padded @ matrix.T
    rotated = rotate(x.to(dtype), signs.to(dtype))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert rotated.dtype == dtype
    assert torch.allclose(rotated.double(), expected, atol=tolerance)


def test_walsh_hadamard_refuses_other_lengths():
    with pytest.raises(ValueError, match="power-of-two"):
        walsh_hadamard(torch.zeros(1, 96))
    with pytest.raises(ValueError, match="63 signs for a rotation of 128"):
        rotate(torch.zeros(1, 100), random_signs(100, 0)[:63])


@pytest.mark.parametrize("dim", [1, 63, 64, 199_210, 7_001])
def test_rotation_blocks_pad_little_and_the_rotation_inverts(dim):
    blocks = hadamard_blocks(dim)
    assert dim <= sum(blocks) < dim + MIN_BLOCK
    assert all(b >= MIN_BLOCK and b & (b - 1) == 0 for b in blocks)
    x = torch.randn(2, dim, dtype=torch.float64)
    signs = random_signs(dim, 0).double()
    rotated = rotate(x, signs)
    assert torch.allclose(rotated.norm(dim=1), x.norm(dim=1))  # orthogonal
    assert torch.allclose(unrotate(rotated, signs, dim), x)


# --- Top-k with error feedback (Stich et al. 2018; Karimireddy et al. 2019) -------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_error_feedback_keeps_what_was_not_sent_to_the_bit(dtype):
    generator = torch.Generator().manual_seed(0)
    update, old = torch.randn(4, 1000, generator=generator), torch.randn(4, 1000) * 1e-3
    corrected = update + old
    indices, values = top_k(corrected, 37)
    sent = densify(indices, values.to(dtype).float(), 1000)
    residual = error_feedback(corrected, sent)
    assert torch.equal(sent + residual, update + old)
    # The sparse residual, bit for bit, with values whose subtraction is delicate.
    edges = corrected.clone()
    edges[0, :3] = torch.tensor([-0.0, float("nan"), float("inf")])
    dense = error_feedback(
        edges, densify(indices, edges.gather(1, indices).to(dtype).float(), 1000)
    )
    for row, index, expected in zip(edges, indices, dense, strict=True):
        sparse = sparse_error_feedback(row.clone(), index, row[index].to(dtype).float())
        assert torch.equal(sparse.view(torch.int32), expected.view(torch.int32))  # every bit
    kept = corrected.abs().gather(1, indices).min(dim=1).values
    dropped = residual.abs().max(dim=1).values if dtype == torch.float32 else None
    if dropped is not None:
        assert (dropped <= kept).all()  # the k largest were sent


def test_topk_compressor_carries_the_residual_between_rounds():
    compressor = TopK(fraction=0.05, value_bits=16)
    compressor.setup(dimension=500, seed=0)
    state: dict[str, torch.Tensor] = {}
    generator = torch.Generator()
    first, second = torch.randn(500), torch.randn(500)
    decoded = compressor.decode(
        compressor.encode(first, config={}, generator=generator, state=state), config={}
    )
    assert torch.equal(decoded + state["residual"], first)
    old = state["residual"].clone()
    decoded = compressor.decode(
        compressor.encode(second, config={}, generator=generator, state=state), config={}
    )
    assert torch.equal(decoded + state["residual"], second + old)


def test_eight_bit_values_keep_their_rounding_in_the_residual():
    compressor = TopK(fraction=0.1, value_bits=8)
    compressor.setup(dimension=1000, seed=0)
    state: dict[str, torch.Tensor] = {}
    update = torch.randn(1000)
    data = compressor.encode(update, config={}, generator=torch.Generator(), state=state)
    decoded = compressor.decode(data, config={})
    assert (decoded != 0).sum() <= 100
    assert torch.allclose(decoded + state["residual"], update, atol=1e-6)
    sent = decoded[decoded != 0]
    assert (sent - update[decoded != 0]).abs().max() <= sent.abs().max() / 254 * 1.0001


def _sets(dim: int) -> dict[str, torch.Tensor]:
    """Index sets below ``dim``: random at several densities, and the edge cases."""
    generator = torch.Generator().manual_seed(dim)
    sets = {
        f"random {count}": torch.randperm(dim, generator=generator)[:count].sort().values
        for count in (1, 5, dim // 100, dim // 20, dim // 2, dim - 1)
    }
    sets |= {
        "empty": torch.arange(0),
        "all": torch.arange(dim),
        "first": torch.tensor([0]),
        "last": torch.tensor([dim - 1]),
        "first and last": torch.tensor([0, dim - 1]),
        "clustered": torch.cat([torch.arange(10, 60), torch.arange(dim - 40, dim)]),
    }
    return {  # those that are sets of coordinates below dim
        name: indices
        for name, indices in sets.items()
        if not len(indices)
        or (int(indices[0]) >= 0 and int(indices[-1]) < dim and bool((indices.diff() > 0).all()))
    }


@pytest.mark.parametrize("dim", [1, 2, 1000, 199_210])
def test_index_sets_round_trip_exactly_in_the_shorter_coding(dim):
    for name, indices in _sets(dim).items():
        data = pack_index_set(indices, dim)
        absolute = packed_size(len(indices), index_bits(dim))
        assert len(data) <= 1 + absolute, name
        assert data[0] == (0 if len(data) == 1 + absolute else 1), name
        decoded = unpack_index_set(data, dim, len(indices))
        assert torch.equal(decoded, indices), name


@pytest.mark.parametrize("fraction", [0.01, 0.03, 0.05, 0.25])
def test_rice_coded_sets_cost_near_the_entropy_bound(fraction):
    # A uniformly random set of k of dim coordinates needs log2(C(dim, k)) bits; Rice
    # codes of its gaps stay within 3% of that (plus a few header bytes), as Golomb
    # codes do for geometric gaps (Gallager and Van Voorhis 1975).
    dim = 199_210
    count = round(fraction * dim)
    indices = torch.randperm(dim, generator=torch.Generator().manual_seed(7))[:count]
    data = pack_index_set(indices.sort().values, dim)
    entropy = (math.lgamma(dim + 1) - math.lgamma(count + 1) - math.lgamma(dim - count + 1)) / (
        math.log(2)
    )
    assert data[0] == 1
    assert 8 * len(data) <= 1.03 * entropy + 24
    assert 8 * len(data) >= entropy  # no code beats the bound: the test measures bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_quantize_rounds_to_the_nearest_level_of_the_largest_magnitude(dtype):
    x = torch.randn(3, 500, dtype=dtype, generator=torch.Generator().manual_seed(0))
    x[1] = 0
    x[2, 7] = float("nan")
    scales, codes = nearest_quantize(x, 127)
    assert scales.dtype == dtype
    assert codes.dtype == torch.int64
    assert scales[0] == x[0].abs().max()
    assert scales[1] == 0
    assert scales[2].isnan()
    assert codes[0].abs().max() == 127
    assert not codes[1].any()
    step = scales[0] / 127  # each value is within half a level of its code's
    assert ((dequantize(scales[:1], codes[:1], 127) - x[:1]).abs() <= step / 2 * (1 + 1e-6)).all()


def test_rice_parameter_is_the_cheapest_of_all_parameters():
    rng = np.random.default_rng(0)
    for mean in (0.5, 3, 20, 150, 5000, 1e6):
        gaps = rng.geometric(1 / (mean + 1), size=997).astype(np.int64) - 1
        costs = [len(gaps) * r + int((gaps >> r).sum()) for r in range(RICE_MAX_PARAMETER + 1)]
        assert rice_parameter(gaps) == int(np.argmin(costs))


def test_rice_codes_round_trip_large_gaps_and_refuse_malformed_bytes():
    gaps = np.array([0, 1, 2**33, 5, 0, 123_456_789], dtype=np.int64)
    assert np.array_equal(rice_decode(rice_encode(gaps), len(gaps)), gaps)
    data = rice_encode(np.array([3, 9, 1], dtype=np.int64))
    with pytest.raises(ValueError, match="holds 3 values, not 4"):
        rice_decode(data, 4)
    with pytest.raises(ValueError, match="holds"):
        rice_decode(data + b"\x00", 3)  # a whole byte of padding
    with pytest.raises(ValueError, match="parameter byte"):
        rice_decode(b"\xff" + data[1:], 3)


def test_index_sets_refuse_what_they_cannot_hold():
    indices = torch.tensor([3, 9, 12])
    with pytest.raises(ValueError, match="increasing"):
        pack_index_set(indices.flip(0), 16)
    with pytest.raises(ValueError, match="increasing"):
        pack_index_set(indices, 12)
    with pytest.raises(ValueError, match="increasing"):
        unpack_index_set(b"\x00" + pack_bits(indices.flip(0), 4), 16, 3)
    beyond = pack_index_set(torch.arange(40, 80), 80)
    assert beyond[0] == 1
    with pytest.raises(ValueError, match="not a coordinate below 60"):
        unpack_index_set(beyond, 60, 40)
    with pytest.raises(ValueError, match="gap of 1099511627776 leaves the 100 coordinates"):
        unpack_index_set(b"\x01" + rice_encode(np.array([5, 2**40])), 100, 2)
    with pytest.raises(ValueError, match="Rice"):
        unpack_index_set(b"\x01", 32, 3)
    with pytest.raises(ValueError, match="unknown index coding"):
        unpack_index_set(b"\x07", 32, 3)


# --- Random mask (Konečný et al. 2016) --------------------------------------------------


def test_random_mask_is_unbiased_and_sends_the_seed_and_values_only():
    compressor = RandomMask(fraction=0.25)
    compressor.setup(dimension=40, seed=0)
    v = torch.randn(40)
    generator = torch.Generator().manual_seed(0)
    encoded = [compressor.encode(v, config={}, generator=generator, state={}) for _ in range(4000)]
    estimates = torch.stack([compressor.decode(e, config={}) for e in encoded])
    sent = (estimates != 0).sum(dim=1)
    assert [len(e) for e in encoded] == (8 + 4 * sent).tolist()
    # Each estimate is 4 v_i with probability 1/4, else 0: standard deviation sqrt(3) |v_i|.
    assert (estimates.mean(0) - v).abs().max() < 6 * math.sqrt(3) * v.abs().max() / math.sqrt(4000)


@pytest.mark.parametrize("fraction", [0.25, 0.03, 0.001])
def test_random_masks_keep_each_coordinate_independently_at_the_rate(fraction):
    dim, seeds = 20_000, 50
    hits = torch.zeros(dim)
    sizes = []
    for seed in range(seeds):
        mask = random_mask(dim, fraction, seed)
        assert bool((mask[1:] > mask[:-1]).all())
        hits[mask] += 1
        sizes.append(len(mask))
    # The mask size is Binomial(dim, fraction); the total over the seeds is within 5
    # standard deviations of its mean, and so are the halves of the coordinates (the
    # rate does not drift along the vector).
    sd = math.sqrt(dim * seeds * fraction * (1 - fraction))
    assert abs(sum(sizes) - dim * seeds * fraction) < 5 * sd
    for half in hits.chunk(2):
        assert abs(float(half.sum()) - dim * seeds * fraction / 2) < 5 * sd / math.sqrt(2)
    assert torch.equal(random_mask(dim, fraction, 3), random_mask(dim, fraction, 3))
    assert not torch.equal(random_mask(dim, fraction, 3), random_mask(dim, fraction, 4))
    assert torch.equal(random_mask(dim, 1.0, 3), torch.arange(dim))


@pytest.mark.parametrize("dim", [1, 63, 64, 65, 1000, 4099])
@pytest.mark.parametrize("fraction", [2**-16, 0.03, 0.25, 0.5, 1 - 2**-16, 1.0])
def test_a_mask_and_its_values_are_the_coordinates_whose_bits_fall_below_the_rate(dim, fraction):
    # The definition in numpy, against the compiled bit masks (blocks of 64 and a tail).
    for seed in range(3):
        row = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
        threshold = round(mask_rate(fraction) * 2**16)
        expected = np.flatnonzero(random_bits(seed, dim).astype(np.int64) < threshold)
        scale = 1 / mask_rate(fraction)
        indices, values = masked_values(row, fraction, seed, scale)
        assert np.array_equal(random_mask(dim, fraction, seed).numpy(), expected)
        assert np.array_equal(indices.numpy(), expected)
        assert torch.equal(values, row[torch.from_numpy(expected)] * scale)


# --- Bit packing ------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 9, 16, 21, 32])
@pytest.mark.parametrize("count", [1, 7, 1001])
def test_bit_packing_round_trips_in_ceil_count_bits_over_8_bytes(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits))
    data = pack_bits(codes, bits)
    assert len(data) == packed_size(count, bits) == math.ceil(count * bits / 8)
    assert torch.equal(unpack_bits(data, bits, count), codes)


def test_unpacking_refuses_a_wrong_length():
    with pytest.raises(ValueError, match="3 bytes"):
        unpack_bits(b"abc", 2, 100)


# --- Compressors in a federation: bytes, decoding, refusals -----------------------------


class CountingExecutor(SerialExecutor):
    """The serial executor, keeping the encoded bytes of every reply."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[list[int]] = []

    def send_and_receive(self, messages):
        replies = super().send_and_receive(messages)
        self.sent.append([len(tensor_bytes(r.tensors["encoded"])) for r in replies.values()])
        return replies


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        # 8 features + bias, 2 classes: dim 18.
        ("qsgd", {"bits": 3}, 4 + packed_size(18, 3)),
        ("qsgd", {"bits": 2, "rotation": True, "scale": "max"}, 4 + packed_size(64, 2)),
        # k = 4: absolute indices (5 bits each, 3 bytes) are never longer than the Rice
        # code's parameter byte, low bits and unary quotients of 4 gaps below 18.
        ("topk", {"fraction": 0.25, "value_bits": 16}, 8 + 1 + packed_size(4, 5) + 4 * 2),
        ("topk", {"fraction": 0.25, "value_bits": 8}, 8 + 1 + packed_size(4, 5) + 4 + 4),
    ],
)
def test_the_bytes_recorded_are_the_encoded_bytes_that_crossed(name, options, expected):
    executor = CountingExecutor()
    fed = tiny_federation(executor=executor, compressor=name, options={name: options})
    records = fed.run(3)
    for record, sent in zip(records, executor.sent, strict=True):
        assert sent == [expected] * 4
        assert record.values["uplink_bytes"] == expected
        assert record.values["encode_seconds"] >= 0
    assert records[-1].metrics["accuracy"] > 0.8


def test_random_mask_records_its_seed_and_values_bytes():
    executor = CountingExecutor()
    fed = tiny_federation(
        executor=executor, compressor="random-mask", options={"random-mask": {"fraction": 0.5}}
    )
    records = fed.run(3)
    for record, sent in zip(records, executor.sent, strict=True):
        # A seed and the values at a Bernoulli mask of 18 coordinates, rate 1/2.
        assert all(size >= 8 and (size - 8) % 4 == 0 and size <= 8 + 18 * 4 for size in sent)
        assert record.values["uplink_bytes"] == sum(sent) / len(sent)
    assert len({size for sent in executor.sent for size in sent}) > 1


def test_compressed_runs_are_reproducible():
    runs = [tiny_federation(compressor="qsgd", options={"qsgd": {"bits": 2}}) for _ in range(2)]
    for fed in runs:
        fed.run(3)
    assert torch.equal(runs[0].params, runs[1].params)


def test_a_reply_that_does_not_decode_is_rejected_with_the_reason():
    class Truncating(SerialExecutor):
        name = "truncating"

        def send_and_receive(self, messages):
            replies = super().send_and_receive(messages)
            first = next(iter(replies))
            encoded = replies[first].tensors["encoded"]
            replies[first].tensors["encoded"] = encoded[:-1]  # type: ignore[index]
            return replies

    fed = tiny_federation(executor=Truncating(), compressor="qsgd")
    (record,) = fed.run(1)
    (reason,) = record.rejected.values()
    assert "qsgd cannot decode" in reason
    assert len(record.clients) - len(record.rejected) == 3


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"qsgd": {"bits": 1}}, "qsgd.bits"),
        ({"qsgd": {"scale": "range"}}, "qsgd.scale"),
        ({"topk": {"fraction": 0.0}}, "topk.fraction"),
        ({"topk": {"value_bits": 4}}, "topk.value_bits"),
        ({"random-mask": {"value_bits": 8}}, "random-mask.value_bits"),
        ({"random-mask": {"fraction": 1.5}}, "random-mask.fraction"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, key):
    (name,) = options
    with pytest.raises(ConfigError) as caught:
        tiny_federation(compressor=name, options=options)
    assert caught.value.key == key


def test_secure_aggregation_refuses_every_compressor_with_the_reason():
    with pytest.raises(ConfigError, match="reveals only the sum") as caught:
        tiny_federation(mechanisms=[ClearSum()], compressor="topk")
    assert caught.value.key == "compressor"


DP_WARNINGS = (
    pytest.mark.filterwarnings("ignore:DP noise comes from:privfl.PrivacyWarning"),
    pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning"),
    pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning"),
)


def _dp(test):
    for mark in DP_WARNINGS:
        test = mark(test)
    return test


@_dp
def test_dp_with_noise_after_the_client_needs_a_compressor_that_keeps_the_clip():
    # (Distributed noise needs secure aggregation, which refuses every compressor.)
    dp = {"dp": {"mode": "central", "noise_multiplier": 0.1}}
    with pytest.raises(ConfigError, match="error_feedback = false"):
        tiny_federation(mechanisms=["dp"], compressor="qsgd", options=dp)
    with pytest.raises(ConfigError, match="keeps the clip norm"):
        tiny_federation(mechanisms=["dp"], compressor="topk", options=dp)
    kept = tiny_federation(
        mechanisms=["dp"],
        compressor="topk",
        options={**dp, "topk": {"error_feedback": False, "fraction": 0.5}},
    )
    assert kept.compressor is not None
    assert kept.compressor.keeps_norm_bound


@_dp
def test_dp_noised_by_each_client_allows_any_compressor():
    fed = tiny_federation(
        mechanisms=["dp"],
        compressor="qsgd",
        options={"dp": {"mode": "local", "noise_multiplier": 0.1}},
    )
    assert fed.compressor is not None
    assert not fed.compressor.keeps_norm_bound


@_dp
def test_dp_clips_before_the_compressor_encodes():
    clip = 0.01
    fed = tiny_federation(
        executor=CountingExecutor(),
        mechanisms=["dp"],
        compressor="topk",
        options={
            "dp": {"clip": clip, "noise_multiplier": 1e-6},
            "topk": {"error_feedback": False, "fraction": 1.0},
        },
    )
    before = fed.params.clone()
    fed.run(1)
    # Every client's decoded update has norm <= clip; the mean of 4 has norm <= clip.
    assert float((fed.params - before).norm()) <= clip * 1.0001


def test_error_feedback_needs_clients_in_this_process():
    with pytest.raises(ConfigError, match="error_feedback = false") as caught:
        tiny_federation(executor=ProcessExecutor(), compressor="topk")
    assert caught.value.key == "compressor"
    options = {"topk": {"error_feedback": False, "fraction": 0.5}}
    with tiny_federation(executor=ProcessExecutor(), compressor="topk", options=options) as fed:
        (record,) = fed.run(1)
    index_set = record.values["uplink_bytes"] - 8 - 9 * 4  # 9 of 18 coordinates
    assert 1 + 2 <= index_set <= 1 + packed_size(9, 5)
    assert not record.rejected


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    ("cls", "options"),
    [
        (QSGD, {"bits": 4}),
        (QSGD, {"bits": 2, "rotation": True, "scale": "max"}),
        (TopK, {"fraction": 0.05, "value_bits": 8}),
    ],
)
def test_a_non_finite_update_encodes_quietly_and_the_server_refuses_it(cls, options, bad):
    compressor = cls(**options)
    compressor.setup(dimension=500, seed=0)
    config = compressor.client_config(round=1)
    update = torch.randn(500, generator=torch.Generator().manual_seed(0))
    update[7] = bad
    # No RuntimeWarning from numpy's casts (warnings are errors in this suite).
    data = compressor.encode(update, config=config, generator=torch.Generator(), state={})
    with pytest.raises(ValueError, match="finite"):
        compressor.decode(data, config=config)


def test_qsgd_decodes_only_its_own_layout():
    compressor = QSGD(bits=2)
    compressor.setup(dimension=10, seed=0)
    data = compressor.encode(torch.ones(10), config={}, generator=torch.Generator(), state={})
    assert len(data) == 4 + 3
    with pytest.raises(ValueError, match="exceeds"):
        compressor.decode(data[:4] + b"\xff\xff\x0f", config={})
    with pytest.raises(ValueError, match="scale"):
        compressor.decode(b"\x00\x00\xc0\x7f" + data[4:], config={})


class HalfPrecision(Compressor):
    """Sends the update as float16: a compressor from a third-party plugin."""

    name = "half"

    def encode(self, update, *, config, generator, state):
        return update.to(torch.float16).numpy().tobytes()

    def decode(self, data, *, config):
        return torch.frombuffer(bytearray(data), dtype=torch.float16).float()


class HalfPlugin:
    @hookimpl
    def privfl_register_compressors(self):
        return [HalfPrecision]


def test_hook_register_compressors():
    fed = tiny_federation(plugins=[HalfPlugin()], compressor="half")
    assert "half" in fed.registry.names("compressor")
    assert {"qsgd", "topk", "random-mask"} <= set(fed.registry.names("compressor"))
    records = fed.run(2)
    assert records[-1].values["uplink_bytes"] == 18 * 2
    with pytest.raises(ConfigError, match="did you mean 'half'"):
        tiny_federation(plugins=[HalfPlugin()], compressor="hal")
