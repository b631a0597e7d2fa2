"""Encoding a stack of clients at once: each client's bytes are those it sends alone.

Also the fast paths under the encoders (bit packing, top-k by selection, seeded
random bits, qsgd's rows in one compiled call), each against the plain definition its
bytes depend on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import pytest
import torch

from privfl import compressors
from privfl.algorithms.bit_coding import (
    pack_bits,
    unpack_bits,
)
from privfl.algorithms.compression import (
    dequantize,
    max_quantize,
    qsgd_levels,
    qsgd_quantize,
    random_bits,
)
from privfl.algorithms.hadamard import random_signs, rotate, unrotate
from privfl.algorithms.qsgd_rows import decode_rows, quantize_rows
from privfl.algorithms.top_k import TOP_K_SAMPLE, top_k
from privfl.builtin.compressors import QSGD, RandomMask, TopK
from privfl.plugins import hookimpl
from privfl.seeding import torch_generator
from privfl.testing import tiny_federation

CONFIGS = [
    (QSGD, {"bits": 4}),
    (QSGD, {"bits": 3}),
    (QSGD, {"bits": 2, "rotation": True, "scale": "max"}),
    (QSGD, {"bits": 12, "rotation": True}),
    (TopK, {"fraction": 0.05, "value_bits": 8}),
    (TopK, {"fraction": 0.02}),
    (TopK, {"fraction": 0.3, "value_bits": 16, "error_feedback": False}),
    (RandomMask, {"fraction": 0.25}),
    (RandomMask, {"fraction": 0.1, "value_bits": 16, "unbiased": False}),
]


@pytest.mark.parametrize(("cls", "options"), CONFIGS, ids=[f"{c.name}{o}" for c, o in CONFIGS])
def test_a_stack_encodes_each_client_to_the_bytes_it_sends_alone(cls, options):
    dim, clients = 3000, 5
    updates = torch.randn(2, clients, dim, generator=torch.Generator().manual_seed(1))
    updates[:, 2] *= 50  # clients of different scales in one stack
    alone, stacked = cls(**options), cls(**options)
    alone.setup(dimension=dim, seed=3)
    stacked.setup(dimension=dim, seed=3)
    alone_states: list[dict[str, torch.Tensor]] = [{} for _ in range(clients)]
    stacked_states: list[dict[str, torch.Tensor]] = [{} for _ in range(clients)]
    for round, rows in enumerate(updates):  # two rounds: error feedback's residual returns
        config = alone.client_config(round=round)
        seeds = [100 * round + k for k in range(clients)]
        expected = [
            alone.encode(row, config=config, generator=torch_generator(s, "c"), state=state)
            for row, s, state in zip(rows, seeds, alone_states, strict=True)
        ]
        got = stacked.encode_all(
            rows.clone(),
            config=config,
            generators=[torch_generator(s, "c") for s in seeds],
            states=stacked_states,
        )
        assert got == expected
        assert len(set(got)) == clients  # each client's own randomness and update
        for mine, theirs in zip(stacked_states, alone_states, strict=True):
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[key], theirs[key]) for key in mine)
            # Each residual is a tensor of its own, so a checkpoint holds one row each.
            assert all(t.untyped_storage().nbytes() == 4 * dim for t in mine.values())


def test_a_stack_in_parts_over_threads_gives_the_bytes_of_one_at_a_time(monkeypatch):
    monkeypatch.setattr(compressors, "ENCODE_PART", 2 * 1000)  # parts of two clients
    updates = torch.randn(7, 1000, generator=torch.Generator().manual_seed(0))
    alone, stacked = TopK(fraction=0.1, value_bits=8), TopK(fraction=0.1, value_bits=8)
    alone.setup(dimension=1000, seed=0)
    stacked.setup(dimension=1000, seed=0)
    alone_states: list[dict[str, torch.Tensor]] = [{} for _ in range(7)]
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(7)]
    calls: list[int] = []
    encode_all = stacked.encode_all

    def counted(rows, **kwargs):
        calls.append(len(rows))
        return encode_all(rows, **kwargs)

    monkeypatch.setattr(stacked, "encode_all", counted)
    with ThreadPoolExecutor(2) as pool:
        for round in range(2):
            generators = [torch_generator(k, round) for k in range(7)]
            encoded, seconds = compressors.encode_stack(
                stacked,
                updates,
                config={},
                generators=generators,
                states=states,
                pool=pool,
                threads=2,
            )
            expected = [
                alone.encode(row, config={}, generator=torch_generator(k, round), state=state)
                for k, (row, state) in enumerate(zip(updates, alone_states, strict=True))
            ]
            assert encoded == expected
            assert seconds > 0
    assert sorted(calls) == [1, 1, 2, 2, 2, 2, 2, 2]  # in parts, not client by client
    for mine, theirs in zip(states, alone_states, strict=True):
        assert torch.equal(mine["residual"], theirs["residual"])


class Recording(TopK):
    """Top-k that keeps what every stacked call received and sent."""

    name = "recording-topk"
    calls: ClassVar[list[tuple[torch.Tensor, list, list, list[bytes]]]] = []

    def encode_all(self, updates, *, config, generators, states):
        before = [g.get_state() for g in generators]
        residuals = [{k: v.clone() for k, v in s.items()} for s in states]
        encoded = super().encode_all(updates, config=config, generators=generators, states=states)
        self.calls.append((updates.clone(), before, residuals, encoded))
        return encoded


class RecordingPlugin:
    @hookimpl
    def privfl_register_compressors(self):
        return [Recording]


def test_a_stacked_host_sends_each_client_the_bytes_of_its_own_encoder():
    Recording.calls = []
    fed = tiny_federation(
        plugins=[RecordingPlugin()],
        executor="vectorized",
        compressor="recording-topk",
        options={"recording-topk": {"fraction": 0.25, "value_bits": 8}},
    )
    records = fed.run(3)
    assert [len(call[0]) for call in Recording.calls] == [4, 4, 4]  # one stack a round
    alone = TopK(fraction=0.25, value_bits=8)
    alone.setup(dimension=18, seed=0)
    for updates, generators, states, encoded in Recording.calls:
        for row, generator_state, state, data in zip(
            updates, generators, states, encoded, strict=True
        ):
            generator = torch.Generator()
            generator.set_state(generator_state)
            assert alone.encode(row, config={}, generator=generator, state=state) == data
    assert all(record.values["encode_seconds"] > 0 for record in records)
    assert records[-1].metrics["accuracy"] > 0.8


# --- Fast paths against their definitions -----------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 18, 31, 32])
@pytest.mark.parametrize("count", [1, 4, 8, 13, 1000])
def test_packed_bits_are_each_code_least_significant_bit_first(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(count))
    data = pack_bits(codes, bits)
    stream = int.from_bytes(data, "little")  # bit i of the stream is bit i % 8 of byte i // 8
    assert [stream >> (i * bits) & (2**bits - 1) for i in range(count)] == codes.tolist()
    assert stream >> (count * bits) == 0  # padding bits are zero
    assert len(data) == (count * bits + 7) // 8
    assert torch.equal(unpack_bits(data, bits, count), codes)


def lowest_top_k(x: torch.Tensor, k: int) -> torch.Tensor:
    """The definition of top_k's set: the k largest magnitudes (NaN largest), ties to the
    lowest coordinates (a stable sort of the negated magnitudes)."""
    magnitudes = x.abs().nan_to_num(nan=float("inf"), posinf=float("inf"))
    return torch.sort(-magnitudes, dim=1, stable=True).indices[:, :k].sort(dim=1).values


SAMPLED = 12 * TOP_K_SAMPLE  # long enough that top_k guesses a threshold from a sample


@pytest.mark.parametrize("dim", [100, 2000, SAMPLED])
def test_top_k_is_torch_topk_set_and_breaks_ties_by_the_lowest_coordinate(dim):
    generator = torch.Generator().manual_seed(dim)
    x = torch.randn(3, dim, generator=generator)
    for k in sorted({1, 2, dim // 20, dim // 2, dim - 1, dim}):
        indices, values = top_k(x, k)
        expected = x.abs().topk(k, dim=1).indices.sort(dim=1).values
        assert torch.equal(indices, expected)  # untied: exactly torch.topk's set
        assert torch.equal(values, x.gather(1, expected))
        tied = torch.round(x * 3) / 3  # few distinct magnitudes: the k-th is tied
        indices, _ = top_k(tied, k)
        assert torch.equal(indices, lowest_top_k(tied, k))
        same = tied.abs().topk(k, dim=1).values.sort(dim=1).values
        assert torch.equal(tied.abs().gather(1, indices).sort(dim=1).values, same)
    # A sample that misleads (every sampled coordinate is huge): still the exact set.
    misleading = torch.rand(2, dim, generator=generator)
    misleading[:, :: max(1, dim // TOP_K_SAMPLE)] += 100
    for k in (dim // 20 + 1, dim - 1):
        assert torch.equal(top_k(misleading, k)[0], lowest_top_k(misleading, k))


def test_top_k_counts_nan_as_largest_like_torch_topk():
    nan = float("nan")
    mixed = torch.tensor([[5.0, nan, 4.0, 0.0], [3.0, 2.0, 2.0, 1.0], [nan, 1.0, nan, nan]])
    indices, _ = top_k(mixed, 2)
    assert indices.tolist() == [[0, 1], [0, 1], [0, 2]]
    wide = torch.randn(1, SAMPLED, generator=torch.Generator().manual_seed(0))
    wide[0, [7, 4000, 30000]] = nan
    assert torch.equal(top_k(wide, 100)[0], lowest_top_k(wide, 100))
    assert {7, 4000, 30000} <= set(top_k(wide, 100)[0][0].tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_k_is_its_definition_at_every_scale_with_ties_nan_and_misleading_samples(dtype):
    # Magnitudes compare as their bits: float64's exceed 2**53 near 1e30, where a
    # comparison through float64 would no longer be exact.
    generator = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    for trial in range(60):
        dim = int(rng.choice([5, 100, 5000, SAMPLED]))
        x = torch.randn(2, dim, generator=generator, dtype=dtype) * 10.0 ** int(
            rng.integers(-30, 30)
        )
        if trial % 3 == 0:
            x = torch.round(x * 2) / 2  # ties
        if trial % 5 == 0:
            x[0, rng.integers(0, dim, 7)] = float("nan")
            x[1, rng.integers(0, dim, 3)] = float("inf")
        if trial % 4 == 0:
            x[:, :: max(1, dim // TOP_K_SAMPLE)] += 1e30  # every sampled coordinate huge
        k = int(rng.integers(1, dim + 1))
        assert torch.equal(top_k(x, k)[0], lowest_top_k(x, k)), (trial, dim, k)


def test_top_k_refuses_other_types():
    with pytest.raises(TypeError, match="float32 or float64"):
        top_k(torch.zeros(1, 10, dtype=torch.float16), 2)


def test_random_bits_are_splitmix64_words_least_significant_draw_first():
    # Four 16-bit draws per SplitMix64 word, least significant first, on every platform.
    words = [splitmix64(11, j) for j in range(3)]
    expected = [w >> (16 * i) & 0xFFFF for w in words for i in range(4)][:10]
    assert random_bits(11, 10).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 12])
@pytest.mark.parametrize("rotated", [False, True], ids=["plain", "rotated"])
@pytest.mark.parametrize("from_largest", [False, True], ids=["norm", "max"])
def test_quantize_rows_is_its_steps_composed_bit_for_bit(dtype, bits, rotated, from_largest):
    # Rotate, draw each row's bits from its seed, quantize, pack; and what the server
    # decodes: each row as the step-by-step functions make it alone.
    dim, levels = 1000, qsgd_levels(bits)
    rows = torch.randn(3, dim, generator=torch.Generator().manual_seed(bits), dtype=dtype)
    rows[1] *= 1e-3
    rows[2, :7] = 0.0
    seeds = [5, 6, 2**62 - 1]
    signs = random_signs(dim, 7) if rotated else None
    scales, packed, decoded = quantize_rows(
        rows, bits, seeds, signs=signs, from_largest=from_largest, decoded=True
    )
    coded = rotate(rows, signs.to(dtype)) if signs is not None else rows
    quantize = max_quantize if from_largest else qsgd_quantize
    for r, seed in enumerate(seeds):
        scale, codes = quantize(coded[r : r + 1], levels, random_bits(seed, coded.shape[1])[None])
        assert torch.equal(scales[r : r + 1], scale)
        assert packed[r].tobytes() == pack_bits(codes, bits)
        expected = dequantize(scale.to(torch.float32), codes, levels, offset=levels)
        if signs is not None:
            expected = unrotate(expected, signs, dim)
        assert torch.equal(decoded[r : r + 1].view(torch.int32), expected.view(torch.int32))
        server = decode_rows(scale.to(torch.float32), codes, levels, signs, dim)
        assert torch.equal(server.view(torch.int32), expected.view(torch.int32))
    again = quantize_rows(rows, bits, seeds, signs=signs, from_largest=from_largest)
    assert torch.equal(again[0], scales)
    assert np.array_equal(again[1], packed)
    assert again[2] is None


def test_quantize_rows_refuses_widths_seed_counts_or_signs_that_do_not_fit():
    rows = torch.zeros(2, 100)
    with pytest.raises(ValueError, match="1 seeds for 2 rows"):
        quantize_rows(rows, 4, [1])
    with pytest.raises(ValueError, match="63 signs for a rotation of 128"):
        quantize_rows(rows, 4, [1, 2], signs=random_signs(100, 0)[:63])
    for bits in (1, 17):
        with pytest.raises(ValueError, match=f"of {bits} bits: quantize_rows takes 2 to 16"):
            quantize_rows(rows, bits, [1, 2])


def splitmix64(seed: int, j: int) -> int:
    """SplitMix64's ``(j + 1)``-th output from ``seed`` (Steele et al. 2014), in Python's
    integers."""
    mask = 2**64 - 1
    z = (seed + (j + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ z >> 30) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ z >> 27) * 0x94D049BB133111EB) & mask
    return z ^ z >> 31


def test_random_bits_are_splitmix64_outputs():
    # The published first output from seed 0 (as in Vigna's reference splitmix64.c).
    assert splitmix64(0, 0) == 0xE220A8397B1DCDAF
    words = random_bits(2**64 - 5, 4 * 1000).view("<u8")
    assert words.tolist() == [splitmix64(2**64 - 5, j) for j in range(1000)]
    # Uniform: each of the 16 high-bit buckets of 2**20 draws within 5 sigma of its share.
    counts = np.bincount(random_bits(3, 2**20) >> 12, minlength=16)
    assert np.abs(counts - 2**16).max() < 5 * np.sqrt(2**16)
