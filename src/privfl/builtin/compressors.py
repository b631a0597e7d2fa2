"""Built-in update compressors: ``qsgd``, ``topk`` and ``random-mask``.

Thin adapters over :mod:`privfl.algorithms.compression`, each with its byte format
(little-endian; everything a client sends is in it, headers included):

``qsgd``
    float32 scale (the L2 norm, or the largest magnitude), then one ``bits``-bit
    code per coordinate (``code + s``), packed;
    with ``rotation`` the codes are of the rotated, padded vector, and the rotation's
    signs come from a seed the server sends each round (one rotation for all clients,
    as in Suresh et al. 2017).
``topk``
    uint32 ``k``, uint32 length of the index set, the index set (a tag byte, then
    ``k`` sorted indices of ``ceil(log2 dim)`` bits each, packed, or the gaps between
    them in a Rice code, whichever is shorter), then ``k`` values: float32, float16, or with
    ``value_bits = 8`` a float32 scale and ``k`` signed bytes.
``random-mask``
    uint64 seed of the mask (the server draws the same coordinates from it: a
    Bernoulli mask of rate ``fraction``, see
    :func:`~privfl.algorithms.random_mask.random_mask`), then the values at the mask's
    coordinates (float32 or float16).

The bytes per client per round are in every round's record as ``uplink_bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from privfl.algorithms.bit_coding import (
    pack_index_set,
    packed_size,
    unpack_bits,
    unpack_index_set,
)
from privfl.algorithms.compression import (
    corrected_rows,
    densify,
    dequantize,
    draw_seed,
    nearest_quantize,
    qsgd_levels,
    qsgd_variance_bound,
    sparse_error_feedback,
)
from privfl.algorithms.hadamard import hadamard_blocks, random_signs
from privfl.algorithms.qsgd_rows import decode_rows, quantize_rows
from privfl.algorithms.random_mask import mask_rate, masked_values, random_mask
from privfl.algorithms.top_k import top_k
from privfl.builtin.secure_quantizer import SharedGrid
from privfl.compressor_stack import Kept, Sparsifier, ValueCoder
from privfl.compressors import StackedCompressor
from privfl.errors import ConfigError
from privfl.plugins import hookimpl
from privfl.seeding import derive_seed

VALUE_DTYPES = {32: torch.float32, 16: torch.float16}
"""Value widths (bits) a sparsifying compressor can send its values in."""
CODE_LEVELS = 127
"""Levels on each side of zero of topk's 8-bit values."""
SCALES = ("norm", "max")
"""What QSGD's ``scale`` option chooses: the scale codes are relative to."""


class QSGD(StackedCompressor, ValueCoder):
    """QSGD stochastic quantization (Alistarh et al. 2017), unbiased, with an optional
    randomized Hadamard rotation first (Suresh et al. 2017).

    :param bits: Bits per coordinate, sign included (2 to 16): ``2**(bits-1) - 1``
        levels on each side of zero, so 2 bits is ternary.
    :param rotation: Rotate every update by one seeded random Hadamard rotation per
        round before quantizing, which lowers the error at few bits with ``scale =
        "max"``.
    :param scale: ``"norm"`` quantizes each coordinate relative to the update's L2
        norm (QSGD); ``"max"`` relative to its largest coordinate (Suresh et al.
        2017's stochastic quantization, far less noisy after a rotation).
    """

    name = "qsgd"
    flags = MappingProxyType({"bits": "--compress-bits", "rotation": "--rotation"})

    def __init__(self, bits: int = 4, rotation: bool = False, scale: str = "norm") -> None:
        if not (isinstance(bits, int) and 2 <= bits <= 16):
            raise ConfigError("bits", bits, "an integer from 2 to 16")
        if scale not in SCALES:
            raise ConfigError("scale", scale, f"one of {', '.join(SCALES)}")
        self.scale = scale
        self.bits = bits
        self.rotation = rotation
        self.levels = qsgd_levels(bits)

    def client_config(self, *, round: int) -> dict[str, Any]:
        return {"rotation_seed": derive_seed(self.seed, "rotation", round)} if self.rotation else {}

    def variance_bound(self, count: int) -> float | None:
        """Alistarh et al.'s Lemma 3.1 for the norm scale (a rotation keeps the norm and
        pads the count); None for ``scale = "max"``, whose worst case is far above its
        typical error after a rotation."""
        if self.scale != "norm":
            return None
        coded = sum(hadamard_blocks(count)) if self.rotation else count
        return qsgd_variance_bound(coded, self.levels)

    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        return self.encode_rows(updates, config=config, generators=generators, decoded=False)[0]

    def encode_rows(
        self,
        rows: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        decoded: bool,
    ) -> tuple[list[bytes], torch.Tensor | None]:
        """The bytes of each row, and where ``decoded`` asks, what :meth:`decode` makes
        of them, from the codes in hand: the same arithmetic, on all rows at once
        (:func:`~privfl.algorithms.qsgd_rows.quantize_rows`)."""
        signs = self._rotation(config) if self.rotation else None
        scales, packed, sent = quantize_rows(
            rows,
            self.bits,
            [draw_seed(generator) for generator in generators],
            signs=signs,
            from_largest=self.scale == "max",
            decoded=decoded,
        )
        datas = [
            struct.pack("<f", scale) + row.tobytes()
            for scale, row in zip(scales.tolist(), packed, strict=True)
        ]
        return datas, sent

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        signs = self._rotation(config) if self.rotation else None
        count = len(signs) if signs is not None else self.dimension
        if len(data) != 4 + packed_size(count, self.bits):
            raise ValueError(
                f"{len(data)} bytes, not the {4 + packed_size(count, self.bits)} of qsgd"
            )
        (scale,) = struct.unpack_from("<f", data)
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"scale {scale} is not a finite number >= 0")
        codes = unpack_bits(data[4:], self.bits, count)  # each code + s
        if bool((codes > 2 * self.levels).any()):
            raise ValueError(f"a code exceeds the {self.levels} levels")
        scales = torch.tensor([scale], dtype=torch.float32)
        return decode_rows(scales, codes.reshape(1, -1), self.levels, signs, self.dimension)[0]

    def _rotation(self, config: Mapping[str, Any]) -> torch.Tensor:
        """The round's random signs, from the shared seed (drawn once: they are cached)."""
        seed = config.get("rotation_seed")
        if not isinstance(seed, int):
            raise ValueError(f"rotation_seed {seed!r} is not a seed")
        return random_signs(self.dimension, seed)


class TopK(StackedCompressor, Sparsifier):
    """Top-k sparsification (Stich et al. 2018) with error feedback (Karimireddy et al.
    2019): each client sends the ``k`` largest coordinates of its update plus its
    residual, and keeps the rest as its next residual.

    :param fraction: Share of the coordinates sent, in (0, 1].
    :param error_feedback: Keep what was not sent (and the rounding of the values)
        for the client's next round; without it the dropped part is lost.
    :param value_bits: 32 sends the values as float32, 16 as float16, 8 as signed
        8-bit codes of the largest value (rounded to the nearest of 255 levels).
    """

    name = "topk"
    flags = MappingProxyType({"fraction": "--compress-fraction"})

    def __init__(
        self, fraction: float = 0.01, error_feedback: bool = True, value_bits: int = 32
    ) -> None:
        _check_fraction(fraction)
        if value_bits not in (*VALUE_DTYPES, 8) or isinstance(value_bits, bool):
            raise ConfigError("value_bits", value_bits, "32 (float32), 16 (float16) or 8")
        self.fraction = float(fraction)
        self.error_feedback = error_feedback
        self.value_bits = value_bits

    @property
    def keeps_state(self) -> bool:
        return self.error_feedback

    @property
    def keeps_norm_bound(self) -> bool:
        # Rounding may enlarge a value; error feedback sends old residuals too.
        return not self.error_feedback and self.value_bits == 32

    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        dim = updates.shape[1]
        k = _count(self.fraction, dim)
        rows: list[torch.Tensor] = []
        corrected = updates
        if self.error_feedback:
            rows, corrected = corrected_rows(updates, [s.get("residual") for s in states])
        indices, values = top_k(corrected, k)
        datas, sent = self._values(values)
        if self.error_feedback:  # each row becomes its client's residual, in place
            for row, index, sent_row, state in zip(rows, indices, sent, states, strict=True):
                state["residual"] = sparse_error_feedback(row, index, sent_row)
        return [
            _index_header(index, dim) + data for index, data in zip(indices, datas, strict=True)
        ]

    def split_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
    ) -> list[Kept]:
        dim = updates.shape[1]
        indices, values = top_k(updates, _count(self.fraction, dim))
        return [
            Kept(_index_header(index, dim), index, row)
            for index, row in zip(indices, values, strict=True)
        ]

    def read_structure(self, data: bytes, *, config: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        dim = self.dimension
        if len(data) < 8:
            raise ValueError("too short for topk's header")
        k, index_bytes = struct.unpack_from("<II", data)
        if not 1 <= k <= dim or len(data) < 8 + index_bytes:
            raise ValueError(f"{len(data)} bytes do not hold topk's {k} of {dim} coordinates")
        return unpack_index_set(data[8 : 8 + index_bytes], dim, k), 8 + index_bytes

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        indices, length = self.read_structure(data, config=config)
        values = self._read_values(data[length:], len(indices))
        return densify(indices.reshape(1, -1), values.reshape(1, -1), self.dimension)[0]

    def _values(self, values: torch.Tensor) -> tuple[list[bytes], torch.Tensor]:
        """Each row's values as bytes, and the float32 values the server will decode."""
        if self.value_bits == 8:
            scales, codes = nearest_quantize(values, CODE_LEVELS)
            sent = dequantize(scales, codes, CODE_LEVELS)
            rows = codes.to(torch.int8).numpy()
            scale_bytes = [struct.pack("<f", scale) for scale in scales.tolist()]
            return [head + row.tobytes() for head, row in zip(scale_bytes, rows, strict=True)], sent
        rounded = values.to(VALUE_DTYPES[self.value_bits])
        return [row.numpy().tobytes() for row in rounded], rounded.to(torch.float32)

    def _read_values(self, data: bytes, k: int) -> torch.Tensor:
        if self.value_bits == 8:
            if len(data) != 4 + k:
                raise ValueError(f"{len(data)} bytes of values, not the {4 + k} of {k} codes")
            (scale,) = struct.unpack_from("<f", data)
            if not (np.isfinite(scale) and scale >= 0):
                raise ValueError(f"scale {scale} is not a finite number >= 0")
            codes = torch.frombuffer(bytearray(data[4:]), dtype=torch.int8).to(torch.int64)
            if bool((codes.abs() > CODE_LEVELS).any()):
                raise ValueError(f"a code exceeds the {CODE_LEVELS} levels")
            scales = torch.tensor([scale], dtype=torch.float32)
            return dequantize(scales, codes.reshape(1, -1), CODE_LEVELS)[0]
        dtype = VALUE_DTYPES[self.value_bits]
        if len(data) != k * torch.finfo(dtype).bits // 8:
            raise ValueError(f"{len(data)} bytes do not hold {k} {dtype} values")
        return _values(data, dtype)


class RandomMask(StackedCompressor, Sparsifier):
    """Konečný et al. 2016's random-mask subsampling: each client sends its update's
    values at a seeded random mask of coordinates, and the seed.

    :param fraction: The mask's rate, in (0, 1]: each coordinate is sent independently
        with this probability (rounded to a multiple of ``2**-16``), so a client sends
        ``fraction * dim`` values on average.
    :param unbiased: Scale the values by one over the rate, which makes the server's
        estimate unbiased (Konečný et al.) but can raise its norm; false sends them as
        they are (the update restricted to the mask).
    :param value_bits: 32 sends the values as float32, 16 as float16.
    """

    name = "random-mask"
    flags = MappingProxyType({"fraction": "--compress-fraction"})

    def __init__(self, fraction: float = 0.1, unbiased: bool = True, value_bits: int = 32) -> None:
        _check_fraction(fraction)
        _check_value_bits(value_bits)
        self.fraction = float(fraction)
        self.unbiased = unbiased
        self.value_bits = value_bits
        self.value_dtype = VALUE_DTYPES[value_bits]

    @property
    def keeps_norm_bound(self) -> bool:
        return not self.unbiased and self.value_dtype == torch.float32

    def encode_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
        states: Sequence[dict[str, torch.Tensor]],
    ) -> list[bytes]:
        parts = self.split_all(updates, config=config, generators=generators)
        return [
            kept.structure + kept.values.to(self.value_dtype).numpy().tobytes() for kept in parts
        ]

    def split_all(
        self,
        updates: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generators: Sequence[torch.Generator],
    ) -> list[Kept]:
        seeds = [draw_seed(g) for g in generators]
        scale = 1 / mask_rate(self.fraction) if self.unbiased else 1.0
        parts = []
        for seed, row in zip(seeds, updates, strict=True):
            mask, values = masked_values(row, self.fraction, seed, scale)
            parts.append(Kept(struct.pack("<Q", seed), mask, values))
        return parts

    def read_structure(self, data: bytes, *, config: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        if len(data) < 8:
            raise ValueError(f"{len(data)} bytes, too short for random-mask's seed")
        (seed,) = struct.unpack_from("<Q", data)
        return random_mask(self.dimension, self.fraction, seed), 8

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        dim, width = self.dimension, torch.finfo(self.value_dtype).bits // 8
        indices, _ = self.read_structure(data, config=config)
        if len(data) != 8 + len(indices) * width:
            raise ValueError(
                f"{len(data)} bytes, not the {8 + len(indices) * width} of random-mask's seed"
                f" and {len(indices)} values"
            )
        return densify(
            indices.reshape(1, -1), _values(data[8:], self.value_dtype).reshape(1, -1), dim
        )[0]


def _index_header(index: torch.Tensor, dim: int) -> bytes:
    """Topk's structure: uint32 ``k``, uint32 length of the index set, the index set."""
    index_set = pack_index_set(index, dim)
    return struct.pack("<II", len(index), len(index_set)) + index_set


def _values(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    """Float32 values from their bytes in ``dtype``."""
    return torch.frombuffer(bytearray(data), dtype=dtype).to(torch.float32)


def _count(fraction: float, dim: int) -> int:
    """Coordinates that a share ``fraction`` of ``dim`` keeps: at least one."""
    return max(1, min(dim, round(fraction * dim)))


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not (0 < fraction <= 1):
        raise ConfigError("fraction", fraction, "a number in (0, 1]")


def _check_value_bits(value_bits: int) -> None:
    if value_bits not in VALUE_DTYPES or isinstance(value_bits, bool):
        raise ConfigError("value_bits", value_bits, "32 (float32) or 16 (float16)")


@hookimpl
def privfl_register_compressors() -> list[type]:
    return [QSGD, TopK, RandomMask, SharedGrid]
