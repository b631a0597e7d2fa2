"""Quantized secure aggregation: shared-grid codes summed in a narrow ring Z_2^k.

The secure sum of the codes equals their plain sum bit for bit (dropouts included), its
decoding equals the decoding of the plain integer sum, the rounding is unbiased, the
masked input travels at k bits a value, and only linear-compatible compressors are
allowed with secure aggregation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from privfl.builtin.secure_quantizer import GridCoding, SharedGrid
from privfl.cli.main import main
from privfl.errors import ConfigError
from privfl.secagg import DropoutPlan, SecAggConfig, secagg_config, secure_sum
from privfl.secagg.encoding import pack_ring, unpack_ring
from privfl.secagg.messages import MaskedInput, ProtocolError
from privfl.secagg.quantization import code_ring_bits, grid_step, quantize_to_grid
from privfl.testing import ClearSum, tiny_federation

HEADER = 2 + 4 + 16 + 32 + 1 + 4 + 5  # version, kind, sender, tag, commitment, bits, count, 0s
DIM = 50


def _contributions(n: int, *, weights: list[int] | None = None, seed: int = 0) -> torch.Tensor:
    """``[w u, w s, w]`` rows: updates of ``DIM`` values and one statistic in [-1, 1]."""
    rng = torch.Generator().manual_seed(seed)
    values = torch.rand(n, DIM + 1, generator=rng, dtype=torch.float64) * 2 - 1
    w = torch.tensor(weights if weights is not None else [1] * n, dtype=torch.float64)
    return torch.cat([values * w[:, None], w[:, None]], dim=1).to(torch.float32)


@pytest.mark.parametrize(
    ("bits", "max_weight", "ring_bits"), [(8, 1, 12), (4, 600, 8), (12, 600, 16), (16, 1, 20)]
)
def test_secure_sum_of_codes_equals_the_plain_sum_with_dropouts(bits, max_weight, ring_bits):
    n = 12
    coding = GridCoding(bits, 1.0, DIM, rotation_seed=5, max_weight=max_weight)
    assert coding.ring_bits(n) == ring_bits
    weights = [1] * n if max_weight == 1 else [100 + 50 * i for i in range(n)]
    rows = _contributions(n, weights=weights)
    codes = {u: coding.encode(rows[u], torch.Generator().manual_seed(u))[0] for u in range(n)}
    digits = coding.weight_digits()  # a weight up to 600 in base 2^b
    codes[0][: -digits - 1] = 2**bits - 1  # the largest codes: the sum must still not wrap
    config = secagg_config(
        range(n),
        variant="secagg+",
        dropout_rate=0.2,
        corruption_rate=0.1,
        ring_bits=ring_bits,
        seed=1,
    )
    # Client 3 drops after sharing its keys (its pairwise masks are rebuilt from key
    # shares); client 7 after sending its masked input (it is in the sum).
    plan = DropoutPlan(masked_input=frozenset({3}), consistency_check=frozenset({7}))
    inputs = {u: c.astype(config.dtype) for u, c in codes.items()}
    outcome = secure_sum(inputs, config, dropout=plan, record_transcript=True)
    survivors = [u for u in range(n) if u != 3]
    assert outcome.survivors == survivors
    plain = sum(codes[u] for u in survivors)
    assert plain.max() < 2**ring_bits  # no wrap: the ring holds the sum
    np.testing.assert_array_equal(outcome.total.astype(np.int64), plain)
    secure, _ = coding.decode(outcome.total, len(survivors))
    expected, _ = coding.decode(plain, len(survivors))
    assert torch.equal(secure, expected)  # the same float decode, bit for bit
    # ... which is the plain sum of the clients' dequantized contributions, up to rounding.
    dequantized = sum(coding.decode(codes[u], 1)[0] for u in survivors)
    torch.testing.assert_close(secure, dequantized, rtol=1e-9, atol=1e-9)
    # Masked inputs are reduced modulo 2^k and travel at k bits a value.
    sent = [m for way, _, m in outcome.transcript or [] if way == "up" and m[1] == MaskedInput.KIND]
    assert len(sent) == n - 1
    for message in sent:
        masked = MaskedInput.from_bytes(message)
        assert masked.ring_bits == ring_bits
        assert int(masked.vector.max()) < 2**ring_bits
        assert len(message) == HEADER + math.ceil(len(codes[0]) * ring_bits / 8)


def test_stochastic_rounding_is_unbiased_with_its_variance_bound():
    bits, radius, draws = 3, 1.5, 20000
    step = grid_step(bits, radius)
    x = torch.linspace(-radius, radius, 23, dtype=torch.float64)
    codes, clamped = quantize_to_grid(
        x.expand(draws, -1), bits=bits, radius=radius, generator=torch.Generator().manual_seed(0)
    )
    assert clamped == 0
    assert int(codes.min()) >= 0
    assert int(codes.max()) <= 2**bits - 1
    values = codes.to(torch.float64) * step - radius
    # E[value] = x (Suresh et al. 2017): within 5 standard errors of s / 2 / sqrt(draws).
    assert float((values.mean(0) - x).abs().max()) < 5 * step / 2 / math.sqrt(draws)
    # Each coordinate rounds to one of its two neighbouring levels: variance <= s^2 / 4.
    assert float(((values - x) ** 2).mean(0).max()) <= step**2 / 4 * 1.05
    assert float((values - x).abs().max()) <= step + 1e-12
    _, clamped = quantize_to_grid(
        torch.tensor([2.0, -1.0, -3.0]), bits=bits, radius=radius, generator=torch.Generator()
    )
    assert clamped == 2


@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000])
@pytest.mark.parametrize("bits", [1, 8, 16])
def test_the_code_ring_is_the_narrowest_that_holds_the_sum(n, bits):
    k = code_ring_bits(bits, n)
    assert 2 ** (k - 1) <= n * (2**bits - 1) < 2**k
    assert k <= bits + math.ceil(math.log2(n + 1))


def test_example_weights_are_applied_before_quantizing_and_capped():
    coding = GridCoding(8, 1.0, DIM, max_weight=400)
    rows = _contributions(3, weights=[100, 400, 700])
    codes = [coding.encode(row, torch.Generator().manual_seed(i))[0] for i, row in enumerate(rows)]
    assert coding.weight_digits() == 2  # 400 in base 256
    assert max(int(c.max()) for c in codes) < 2**8  # so the 11-bit ring of 3 codes holds all
    total, clamped = coding.decode(sum(codes), 3)
    assert float(total[-1]) == 100 + 400 + 400  # the third weight is capped at max_weight
    assert clamped == 1
    unweighted = rows[:, :-1].to(torch.float64) / rows[:, -1:].to(torch.float64)
    expected = (unweighted * torch.tensor([[100.0], [400.0], [400.0]], dtype=torch.float64)).sum(0)
    # Unbiased, with error at most one grid step per client, times max_weight.
    bound = 3 * grid_step(8, 1.0) * 400
    assert float((total[:-1] - expected).abs().max()) <= bound


def test_a_narrow_ring_client_refuses_an_input_outside_the_ring(by_hand):
    round_ = by_hand(SecAggConfig(4, threshold=2, ring_bits=12))
    round_.keys()
    relays = round_.shares()
    with pytest.raises(ProtocolError, match="outside the ring Z_2\\^12"):
        round_.clients[0].masked_input(relays[0], np.array([1, 2**12], dtype=np.uint32))


def test_the_shared_grid_compressor_alone_packs_its_codes():
    compressor = SharedGrid(bits=4, range=2.0, rotation=True)
    compressor.setup(dimension=100, seed=3)
    config = compressor.client_config(round=1)
    update = torch.linspace(-1, 1, 100)
    data = compressor.encode(update, config=config, generator=torch.Generator(), state={})
    assert len(data) == 128 * 4 // 8  # padded to the rotation's 128 coordinates, 4 bits each
    decoded = compressor.decode(data, config=config)
    assert decoded.shape == (100,)
    assert float((decoded - update).norm()) < float(update.norm())
    with pytest.raises(ValueError, match="not the 64"):
        compressor.decode(data[:-1], config=config)


def test_quantized_secagg_plus_records_the_packed_bytes_and_learns_like_fedavg():
    plain = tiny_federation(num_clients=8)
    secure = tiny_federation(
        num_clients=8,
        mechanisms=["secagg+"],
        compressor="shared-grid",
        options={"shared-grid": {"bits": 8, "max_weight": 64}, "secagg+": {"dropout": 0.25}},
    )
    start = plain.params.clone()
    plain.run(1)
    (record,) = secure.run(1)
    values = record.values
    k = values["secagg_ring_bits"]
    assert k == code_ring_bits(8, 8)
    dim = secure.params.numel()
    length = HEADER + math.ceil((dim + 2) * k / 8)  # codes, the weight's digit, clamp count
    contributors = values["secagg_contributors"]
    assert contributors < 8  # some dropped before their input was summed
    sizes = values["secagg_input_bytes"]
    assert set(sizes.values()) == {length}
    assert values["uplink_bytes"] == length
    # The payload is k / 32 of a float32 vector of the same length.
    assert (length - HEADER) / (4 * (dim + 2)) == pytest.approx(k / 32, abs=1 / (4 * (dim + 2)))
    moved = (secure.params - start).norm() / (plain.params - start).norm()
    assert 0.3 < float(moved) < 3  # the same scale of step, from fewer clients and codes


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore::privfl.UtilityWarning")
@pytest.mark.parametrize(
    ("settings", "key", "match"),
    [
        ({"compressor": "topk", "mechanisms": ["secagg+"]}, "compressor", "linear-compatible"),
        ({"compressor": "qsgd", "mechanisms": ["secagg"]}, "compressor", "per-client norms"),
        ({"compressor": "shared-grid", "mechanisms": [ClearSum()]}, "compressor", "sums the"),
        ({"compressor": "shared-grid", "mechanisms": ["secagg+"]}, "max_weight", "example"),
        (
            {"compressor": "shared-grid", "mechanisms": ["dp", "secagg+"]},
            "compressor",
            "keeps the clip norm",
        ),
    ],
)
def test_secure_aggregation_allows_only_linear_compatible_compressors(settings, key, match):
    with pytest.raises(ConfigError, match=match) as caught:
        tiny_federation(**settings)
    assert caught.value.key == key


@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore::privfl.UtilityWarning")
def test_under_client_level_dp_codes_have_weight_one_and_the_clip_as_range():
    fed = tiny_federation(
        num_clients=6,
        mechanisms=["dp", "secagg"],
        compressor="shared-grid",
        options={"dp": {"mode": "local", "clip": 0.5, "noise_multiplier": 0.01}},
    )
    (record,) = fed.run(1)
    assert record.values["secagg_ring_bits"] == code_ring_bits(8, 6)
    assert 0.5 < record.values["secagg_bound"] < 0.6  # the clip plus 10 noise std
    assert record.values["secagg_contributors"] == 6


def test_quantized_secure_runs_repeat_bit_for_bit():
    def run() -> torch.Tensor:
        fed = tiny_federation(
            num_clients=5,
            mechanisms=["secagg"],
            compressor="shared-grid",
            options={"shared-grid": {"bits": 6, "max_weight": 64, "rotation": True}},
        )
        fed.run(2)
        return fed.params

    assert torch.equal(run(), run())  # the rounding is seeded per client and round


def test_privfl_run_with_secagg_plus_and_shared_grid_learns_and_counts_bytes(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["run", "--model", "2nn", "--clients", "20", "--clients-per-round", "5"]
    argv += ["--rounds", "2", "--secagg", "secagg+", "--compressor", "shared-grid"]
    argv += ["--compress-bits", "8", "--option", "shared-grid.max_weight=1000"]
    assert main([*argv, "--run-dir", str(run_dir)]) == 0
    records = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    k = code_ring_bits(8, 5)
    dim = 199_210  # the 2NN
    for record in records:
        assert record["secagg_ring_bits"] == k
        # codes, two base-256 digits of the weight (up to 1000), the clamp count
        assert record["uplink_bytes"] == HEADER + math.ceil((dim + 2 + 1) * k / 8)
    assert records[-1]["accuracy"] > 0.6  # chance is 0.1


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 12, 17, 24, 31, 33, 47, 63])
@pytest.mark.parametrize("size", [1, 8, 13])
def test_ring_values_pack_least_significant_bit_first(bits, size):
    dtype = np.uint32 if bits <= 32 else np.uint64
    values = np.random.default_rng(bits).integers(0, 2**bits, size=size, dtype=dtype)
    data = bytes(pack_ring(values, bits))
    planes = np.unpackbits(values.view(np.uint8).reshape(size, -1), axis=1, bitorder="little")
    assert data == np.packbits(planes[:, :bits], bitorder="little").tobytes()
    np.testing.assert_array_equal(unpack_ring(data, bits, size), values)
