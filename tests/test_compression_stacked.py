"""Encoding a stack of clients at once: each client's bytes are those it sends alone.

Also the fast paths under the encoders (bit packing, top-k by selection, seeded
uniforms), each against the plain definition its bytes depend on.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import pytest
import torch

from privfl import compressors
from privfl.algorithms.bit_coding import (
    pack_bits,
    unpack_bits,
)
from privfl.algorithms.compression import (
    row_uniforms,
    top_k,
)
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
                stacked, updates, config={}, generators=generators, states=states, pool=pool
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


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 11, 18])
@pytest.mark.parametrize("count", [1, 8, 13, 1000])
def test_packed_bits_are_each_code_least_significant_bit_first(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(count))
    data = pack_bits(codes, bits)
    stream = int.from_bytes(data, "little")  # bit i of the stream is bit i % 8 of byte i // 8
    assert [stream >> (i * bits) & (2**bits - 1) for i in range(count)] == codes.tolist()
    assert stream >> (count * bits) == 0  # padding bits are zero
    assert len(data) == (count * bits + 7) // 8
    assert torch.equal(unpack_bits(data, bits, count), codes)


def test_top_k_takes_the_k_largest_magnitudes_and_breaks_ties_by_topk():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2000, generator=generator)
    indices, values = top_k(x, 50)
    expected = x.abs().topk(50, dim=1).indices.sort(dim=1).values
    assert torch.equal(indices, expected)
    assert torch.equal(values, x.gather(1, expected))
    tied = torch.zeros(2, 100)
    tied[:, :10] = torch.arange(1.0, 11.0)  # 10 distinct values, then 90 tied zeros
    indices, _ = top_k(tied, 30)
    assert indices.shape == (2, 30)
    assert len(set(indices[0].tolist())) == 30
    assert set(range(10)) <= set(indices[0].tolist())
    assert bool((indices[:, 1:] > indices[:, :-1]).all())
    # One row one short of k (a NaN), the next one over (a tie): k each all the same.
    mixed = torch.tensor([[5.0, float("nan"), 4.0, 0.0], [3.0, 2.0, 2.0, 1.0]])
    indices, _ = top_k(mixed, 2)
    assert indices.shape == (2, 2)
    assert indices[1].tolist() in ([0, 1], [0, 2])


def test_row_uniforms_are_each_generator_own_draws():
    seeds = [5, 6, 7]
    rows = row_uniforms((3, 1000), [torch.Generator().manual_seed(s) for s in seeds], torch.float32)
    for row, seed in zip(rows, seeds, strict=True):
        alone = torch.rand((1, 1000), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(row, alone[0])
