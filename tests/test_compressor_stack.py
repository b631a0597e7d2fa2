"""Stacked compressors: a sparsifier, then a coder of the values it keeps (Konečný et al.
2016's sketched updates; Basu et al. 2019's Qsparse-local-SGD).

The stack's estimate is unbiased when both stages are, its error feedback keeps exactly
what the server does not decode, its bytes are the parts' formats end to end, and only
the sparsifier-then-coder shape is accepted.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch

from privfl import ConfigError
from privfl.algorithms.bit_coding import packed_size
from privfl.algorithms.random_mask import mask_rate, random_mask
from privfl.algorithms.top_k import top_k
from privfl.app.config import check_components, load_toml, make_config
from privfl.builtin.compressors import QSGD, RandomMask, TopK
from privfl.builtin.process_executor import ProcessExecutor
from privfl.cli.main import main
from privfl.compressor_stack import CompressorStack, ValueCoder, compressor_names
from privfl.plugins import get_plugin_manager, hookimpl
from privfl.seeding import torch_generator
from privfl.testing import ClearSum, tiny_federation


def _stack(sparsifier, coder, dim: int, seed: int = 0) -> CompressorStack:
    stack = CompressorStack(sparsifier, coder)
    stack.setup(dimension=dim, seed=seed)
    return stack


# --- Unbiasedness (Konečný et al. 2016; Alistarh et al. 2017) --------------------------


DRAWS = 1000


def _mean_error_in_standard_errors(stack: CompressorStack, v: torch.Tensor) -> float:
    """The largest |mean of DRAWS decoded estimates - v| over the coordinates, in units
    of each coordinate's standard error (estimated from the draws)."""
    config = stack.client_config(round=0)
    encoded = stack.encode_all(
        v.expand(DRAWS, -1),
        config=config,
        generators=[torch_generator(7, draw) for draw in range(DRAWS)],
        states=[{} for _ in range(DRAWS)],
    )
    estimates = torch.stack([stack.decode(data, config=config) for data in encoded]).double()
    standard_error = estimates.std(dim=0) / math.sqrt(DRAWS)
    return float(((estimates.mean(dim=0) - v) / standard_error).abs().max())


@pytest.mark.parametrize(
    "coder",
    [{"bits": 3}, {"bits": 2, "rotation": True, "scale": "max"}],
    ids=["qsgd", "rotated-qsgd"],
)
def test_random_mask_then_qsgd_is_unbiased(coder):
    v = torch.randn(40, generator=torch.Generator().manual_seed(0)) + 0.5
    stack = _stack(RandomMask(fraction=0.25), QSGD(**coder), dim=40)
    # 40 coordinates, each mean within 5 standard errors of v (a false alarm in about
    # one run in 50,000 for an unbiased estimate).
    assert _mean_error_in_standard_errors(stack, v) < 5
    # The same check catches a biased stack: without the 1/p scaling the mean is v / 4.
    biased = _stack(RandomMask(fraction=0.25, unbiased=False), QSGD(**coder), dim=40)
    assert _mean_error_in_standard_errors(biased, v) > 20


# --- Error feedback on the stack's output (Basu et al. 2019) --------------------------


@pytest.mark.parametrize(
    "coder",
    [
        lambda: QSGD(bits=3),
        lambda: QSGD(bits=2, rotation=True, scale="max"),  # its decoded values as it codes
        lambda: PlainValues(),  # ValueCoder.encode_rows' default: decode the bytes
    ],
    ids=["qsgd", "qsgd-rotated", "default"],
)
def test_a_stack_with_error_feedback_keeps_the_update_less_what_the_server_decodes(coder):
    dim, clients = 500, 4
    stack = _stack(TopK(fraction=0.1), coder(), dim)
    lossy = not isinstance(stack.coder, PlainValues)
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(clients)]
    updates = torch.randn(3, clients, dim, generator=torch.Generator().manual_seed(1))
    for round, rows in enumerate(updates):
        config = stack.client_config(round=round)
        before = [state.get("residual", torch.zeros(dim)) for state in states]
        encoded = stack.encode_all(
            rows,
            config=config,
            generators=[torch_generator(round, k) for k in range(clients)],
            states=states,
        )
        for row, old, data, state in zip(rows, before, encoded, states, strict=True):
            decoded = stack.decode(data, config=config)
            assert torch.equal(state["residual"], (row + old) - decoded)
            (largest,), _ = top_k((row + old)[None], 50)
            kept = decoded.nonzero().flatten()
            assert set(kept.tolist()) <= set(largest.tolist())  # only the top k are sent
            # The quantizer's error stays in the residual too: at the kept coordinates
            # it is not zero, as it is for top-k alone.
            assert bool((state["residual"][kept] != 0).any()) == lossy


def _residual_growth(stack: CompressorStack, rounds: int = 40) -> tuple[float, float]:
    """The largest residual over ``rounds`` rounds of one constant update, and the error
    of the mean decoded update, both relative to the update's norm."""
    u = torch.randn(stack.dimension, generator=torch.Generator().manual_seed(0))
    state: dict[str, torch.Tensor] = {}
    total, largest = torch.zeros_like(u), 0.0
    for round in range(rounds):
        config = stack.client_config(round=round)
        data = stack.encode(u, config=config, generator=torch_generator(round), state=state)
        total += stack.decode(data, config=config)
        largest = max(largest, float(state["residual"].norm() / u.norm()))
    return largest, float((total / rounds - u).norm() / u.norm())


def test_with_error_feedback_qsgd_values_are_scaled_so_the_residual_stays_bounded():
    # Top 100 of 2000, then 3-bit QSGD: beta = sqrt(100) / 3 (Alistarh et al.'s Lemma
    # 3.1), more noise than signal. Basu et al.'s 1 / (1 + beta) keeps error feedback
    # contracting; without it the residual grows without bound.
    stack = _stack(TopK(fraction=0.05), QSGD(bits=3), dim=2000)
    beta = stack.coder.variance_bound(100)
    assert beta == pytest.approx(10 / 3)
    config = stack.client_config(round=0)
    data = stack.encode(torch.randn(2000), config=config, generator=torch_generator(1), state={})
    indices, length = stack.sparsifier.read_structure(data, config={})
    coder = QSGD(bits=3)
    coder.setup(dimension=100, seed=0)
    expected = coder.decode(data[length:], config={}) / (1 + beta)
    assert torch.equal(stack.decode(data, config=config)[indices], expected)
    largest, mean_error = _residual_growth(stack)
    assert largest < 30  # measured 21.3 over 40 rounds
    assert mean_error < 0.8  # the decoded updates average to the update (measured 0.47 at 60)
    unscaled = _stack(TopK(fraction=0.05), QSGD(bits=3), dim=2000)
    unscaled.coder.variance_bound = lambda count: None
    assert _residual_growth(unscaled)[0] > 300  # measured 1035
    # Without error feedback the values are not scaled: the estimate stays unbiased.
    plain = _stack(TopK(fraction=0.05, error_feedback=False), QSGD(bits=3), dim=2000)
    data = plain.encode(torch.randn(2000), config=config, generator=torch_generator(1), state={})
    indices, length = plain.sparsifier.read_structure(data, config={})
    assert torch.equal(
        plain.decode(data, config=config)[indices], coder.decode(data[length:], config={})
    )


# --- Bytes: structure, then the coded values ------------------------------------------


def test_the_bytes_are_the_sparsifier_structure_then_the_coder_bytes_of_the_kept_values():
    dim = 1000
    rows = torch.randn(3, dim, generator=torch.Generator().manual_seed(2))
    generators = [torch_generator(3, k) for k in range(3)]
    masked = _stack(RandomMask(fraction=0.1), QSGD(bits=4), dim)
    config = masked.client_config(round=0)
    assert config == {"random-mask": {}, "qsgd": {}}
    for data in masked.encode_all(rows, config=config, generators=generators, states=[{}] * 3):
        (seed,) = struct.unpack_from("<Q", data)
        mask = random_mask(dim, 0.1, seed)
        assert len(data) == 8 + 4 + packed_size(len(mask), 4)  # seed, scale, codes
        coder = QSGD(bits=4)
        coder.setup(dimension=len(mask), seed=0)
        decoded = masked.decode(data, config=config)
        assert torch.equal(decoded[mask], coder.decode(data[8:], config={}))
        assert decoded.count_nonzero() == decoded[mask].count_nonzero()  # none outside
    top = _stack(TopK(fraction=0.05), QSGD(bits=2, rotation=True, scale="max"), dim)
    config = top.client_config(round=4)
    coder = QSGD(bits=2, rotation=True, scale="max")
    coder.setup(dimension=50, seed=0)
    for data in top.encode_all(rows, config=config, generators=generators, states=[{}] * 3):
        k, index_bytes = struct.unpack_from("<II", data)
        assert k == 50
        # The 50 values are rotated and padded to 64, then coded in 2 bits each.
        assert len(data) == 8 + index_bytes + 4 + packed_size(64, 2)
        indices, length = top.sparsifier.read_structure(data, config=config["topk"])
        assert length == 8 + index_bytes
        decoded = top.decode(data, config=config)
        assert torch.equal(decoded[indices], coder.decode(data[length:], config=config["qsgd"]))
        assert decoded.count_nonzero() == decoded[indices].count_nonzero()


class CountingStack:
    """Records every stacked encoding's bytes (a spy on CompressorStack.encode_all)."""

    def __init__(self, monkeypatch) -> None:
        self.encoded: list[list[bytes]] = []
        original = CompressorStack.encode_all

        def spy(stack, updates, **kwargs):
            encoded = original(stack, updates, **kwargs)
            self.encoded.append(list(encoded))
            return encoded

        monkeypatch.setattr(CompressorStack, "encode_all", spy)


def test_privfl_run_random_mask_qsgd_counts_the_bytes_of_both_formats(
    tmp_path, monkeypatch, capsys
):
    spy = CountingStack(monkeypatch)
    run_dir = tmp_path / "run"
    flags = ["--model", "2nn", "--clients", "20", "--clients-per-round", "5", "--rounds", "2"]
    stack = [
        "--compressor",
        "random-mask,qsgd",
        "--compress-fraction",
        "0.1",
        "--compress-bits",
        "4",
    ]
    assert main(["run", *flags, *stack, "--run-dir", str(run_dir)]) == 0
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    sent = [data for call in spy.encoded for data in call]
    assert len(sent) == 10  # 5 clients, 2 rounds
    dim = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10  # the 2NN: 199,210
    for data in sent:
        (seed,) = struct.unpack_from("<Q", data)
        kept = len(random_mask(dim, 0.1, seed))
        assert abs(kept - mask_rate(0.1) * dim) < 5 * math.sqrt(dim * 0.1 * 0.9)
        assert len(data) == 8 + 4 + packed_size(kept, 4)  # random-mask's seed; qsgd's scale, codes
    for record, round_sent in zip(history, (sent[:5], sent[5:]), strict=True):
        assert record["uplink_bytes"] == sum(map(len, round_sent)) / 5
        assert record["uplink_bytes"] < 4 * dim / 70  # about 80x fewer than float32
    written = load_toml(run_dir / "config.toml")
    assert written["compressor"] == ["random-mask", "qsgd"]
    assert written["random-mask"] == {"fraction": 0.1}
    assert written["qsgd"] == {"bits": 4}
    assert make_config(written).compressor == ("random-mask", "qsgd")


# --- Stacked encoding gives each client its own bytes ---------------------------------

STACKS = [
    (RandomMask, {"fraction": 0.25}, QSGD, {"bits": 4}),
    (
        RandomMask,
        {"fraction": 0.1, "unbiased": False},
        QSGD,
        {"bits": 2, "rotation": True, "scale": "max"},
    ),
    (TopK, {"fraction": 0.05}, QSGD, {"bits": 3}),
    (TopK, {"fraction": 0.2, "error_feedback": False}, QSGD, {"bits": 8, "rotation": True}),
]


@pytest.mark.parametrize(("sparsifier", "s_options", "coder", "c_options"), STACKS)
def test_a_stack_of_clients_gets_the_bytes_each_client_sends_alone(
    sparsifier, s_options, coder, c_options
):
    dim, clients = 3000, 5
    updates = torch.randn(2, clients, dim, generator=torch.Generator().manual_seed(1))
    updates[:, 2] *= 50
    alone = _stack(sparsifier(**s_options), coder(**c_options), dim, seed=3)
    stacked = _stack(sparsifier(**s_options), coder(**c_options), dim, seed=3)
    alone_states: list[dict[str, torch.Tensor]] = [{} for _ in range(clients)]
    stacked_states: list[dict[str, torch.Tensor]] = [{} for _ in range(clients)]
    for round, rows in enumerate(updates):
        config = alone.client_config(round=round)
        expected = [
            alone.encode(row, config=config, generator=torch_generator(round, k), state=state)
            for k, (row, state) in enumerate(zip(rows, alone_states, strict=True))
        ]
        got = stacked.encode_all(
            rows.clone(),
            config=config,
            generators=[torch_generator(round, k) for k in range(clients)],
            states=stacked_states,
        )
        assert got == expected
        assert len(set(got)) == clients
        for mine, theirs in zip(stacked_states, alone_states, strict=True):
            assert mine.keys() == theirs.keys() == ({"residual"} if alone.keeps_state else set())
            assert all(torch.equal(mine[key], theirs[key]) for key in mine)


# --- Configuration: the shapes accepted, and the refused ------------------------------


@pytest.mark.parametrize(
    "names",
    [
        ["qsgd", "topk"],
        ["topk", "random-mask"],
        ["qsgd", "qsgd"],
        ["random-mask", "qsgd", "qsgd"],
        ["shared-grid", "qsgd"],
        ["topk", "shared-grid"],
    ],
)
def test_only_a_sparsifier_then_a_value_coder_is_accepted(names):
    with pytest.raises(ConfigError) as caught:  # when the federation is built
        tiny_federation(compressor=names)
    assert caught.value.key == "compressor"
    assert caught.value.value == names
    assert (
        "a sparsifier then a value coder (sparsifiers: random-mask, topk; value coders: qsgd"
        in str(caught.value)
    )
    with pytest.raises(ConfigError) as caught:  # and before the run loads any data
        check_components(make_config({"compressor": names}), get_plugin_manager().components)
    assert caught.value.value == names


def test_compressor_names_read_lists_and_commas_and_refuse_empty_names():
    assert compressor_names("random-mask,qsgd") == ("random-mask", "qsgd")
    assert compressor_names(["topk", " qsgd"]) == ("topk", "qsgd")
    assert make_config({"compressor": ["qsgd"]}).compressor == "qsgd"
    assert make_config({"compressor": "topk, qsgd"}).compressor == ("topk", "qsgd")
    for bad in ("topk,", [], ["topk", 3]):
        with pytest.raises(ConfigError, match="such as"):
            make_config({"compressor": bad})


def test_a_sparsifier_value_format_is_refused_in_a_stack():
    with pytest.raises(ConfigError) as caught:
        tiny_federation(compressor=["topk", "qsgd"], options={"topk": {"value_bits": 8}})
    assert caught.value.key == "topk.value_bits"
    assert "qsgd codes the values" in str(caught.value)


# --- Composition with privacy ----------------------------------------------------------


class PlainValues(ValueCoder):
    """A value coder that sends float32 values as they are (it keeps the norm)."""

    name = "plain-values"

    @property
    def keeps_norm_bound(self) -> bool:
        return True

    def encode(self, update, *, config, generator, state) -> bytes:
        return update.numpy().tobytes()

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        if len(data) != 4 * self.dimension:
            raise ValueError(f"{len(data)} bytes, not {self.dimension} float32 values")
        return torch.frombuffer(bytearray(data), dtype=torch.float32)


class PlainValuesPlugin:
    @hookimpl
    def privfl_register_compressors(self) -> Sequence[type]:
        return [PlainValues]


def test_a_stack_is_refused_under_secure_aggregation_like_its_parts():
    with pytest.raises(ConfigError, match="reveals only the sum") as caught:
        tiny_federation(mechanisms=[ClearSum()], compressor=["random-mask", "qsgd"])
    assert caught.value.value == "random-mask,qsgd"


DP = {"dp": {"mode": "central", "noise_multiplier": 1e-6, "clip": 0.01}}


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning", "ignore::privfl.UtilityWarning")
def test_with_central_dp_a_stack_must_keep_the_clip_in_both_stages():
    with pytest.raises(ConfigError, match="keeps the clip norm"):
        tiny_federation(mechanisms=["dp"], compressor=["random-mask", "qsgd"], options=DP)
    unscaled = {"random-mask": {"unbiased": False, "fraction": 1.0}}
    with pytest.raises(ConfigError, match="keeps the clip norm"):  # qsgd can enlarge it
        tiny_federation(
            mechanisms=["dp"], compressor=["random-mask", "qsgd"], options={**DP, **unscaled}
        )
    fed = tiny_federation(
        plugins=[PlainValuesPlugin()],
        mechanisms=["dp"],
        compressor=["random-mask", "plain-values"],
        options={**DP, **unscaled},
    )
    assert fed.compressor is not None
    assert fed.compressor.keeps_norm_bound
    before = fed.params.clone()
    fed.run(1)
    # Clipped before the stack encodes: the mean of 4 decoded updates has norm <= clip.
    assert float((fed.params - before).norm()) <= 0.01 * 1.0001
    local = {"dp": {"mode": "local", "noise_multiplier": 0.1}}
    allowed = tiny_federation(mechanisms=["dp"], compressor=["topk", "qsgd"], options=local)
    assert allowed.compressor is not None
    assert not allowed.compressor.keeps_norm_bound


def test_a_stack_with_error_feedback_needs_clients_in_this_process():
    with pytest.raises(ConfigError, match="error_feedback = false"):
        tiny_federation(executor=ProcessExecutor(), compressor=["topk", "qsgd"])
