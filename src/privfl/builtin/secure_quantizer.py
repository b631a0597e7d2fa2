"""The ``shared-grid`` compressor: stochastic quantization that composes with secure aggregation.

Each client rounds every coordinate of its update, unbiasedly, onto one grid of ``2^b``
levels over ``[-R, R]`` that all clients of the round share
(:mod:`privfl.secagg.quantization`; Suresh et al. 2017), optionally after one seeded
randomized Hadamard rotation per round, the same for all clients. Because the grid
and the rotation are shared, the codes add up: the sum of the clients' codes decodes to
the sum of their dequantized updates. So this compressor works in two ways:

- **Alone**: each client sends its ``b``-bit codes, packed (``ceil(d b / 8)`` bytes for
  ``d`` coordinates, padded to the rotation's length with ``rotation``, and no
  header), and the server decodes each update with ``R = range``.
- **Under secure aggregation** (``--secagg``): the mechanism asks it for
  :class:`GridCoding`, and clients sum their codes in a ring of
  ``k = bit_length(n (2^b - 1))`` bits, masked and packed at ``k`` bits a value, so the
  masked input shrinks to about ``k / 32`` of a 32-bit ring's. ``R`` is then ``range``
  or, when smaller, the bound that the privacy mechanisms declare (DP's clip norm,
  :meth:`privfl.PrivacyMechanism.value_bound`). Weight-1 contributions (client-level
  DP) need nothing more; with FedAvg's example-count weights each client weights its
  update *before* quantizing, by ``min(w, W) / W`` for ``W = max_weight``, and sends
  ``min(w, W)`` in base ``2^b`` digits (:class:`GridCoding`), since the ring is sized
  before the round and the server learns the weights only after; without
  ``max_weight`` such weights are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from privfl.algorithms.bit_coding import (
    pack_bits,
    packed_size,
    unpack_bits,
)
from privfl.algorithms.hadamard import random_signs, rotate, unrotate
from privfl.compressors import Compressor
from privfl.errors import ConfigError, DataError
from privfl.secagg.quantization import (
    check_code_bits,
    code_ring_bits,
    decode_codes,
    quantize_to_grid,
)
from privfl.seeding import derive_seed


@dataclass(frozen=True)
class GridCoding:
    """How a round's secure-aggregation contributions become codes, and their sum decodes.

    A contribution is ``[w u, w s, w]`` (see the round protocol): update ``u`` and
    statistics ``s`` weighted by ``w``, then ``w``. With ``W = max_weight`` (1 for weight-1
    contributions), a client weights *before* quantizing: it caps its weight at ``W``
    (``w' = min(w, W)``, a capped weight counting as a clamped value), quantizes
    ``v = (w' / W) [u, s]``, whose values the bound on ``u`` and ``s`` bounds too, and
    sends the codes of ``v`` (rotated, for ``u``), then ``w'`` in base ``2^b`` (its
    :meth:`weight_digits` digits, least significant first), then the number of values
    it clamped (capped at ``2^b - 1``). Every value sent is below ``2^b``, so the ring
    that holds ``n (2^b - 1)`` holds every sum; the sums decode to
    ``W * sum(v) = sum(w' [u, s])`` and ``sum(w') = sum_j 2^(b j) sum(digit j)``,
    exactly linear in the codes, and unbiased.

    :ivar bits: ``b``, bits per code.
    :ivar radius: ``R``, the grid's half-width.
    :ivar dimension: The length of an update.
    :ivar rotation_seed: Seed of the round's shared rotation, or None for none.
    :ivar max_weight: ``W``, the largest weight a client contributes with.
    """

    bits: int
    radius: float
    dimension: int
    rotation_seed: int | None = None
    max_weight: int = 1

    def ring_bits(self, num_clients: int) -> int:
        """Bits of the ring that holds the sums of ``num_clients`` clients' codes."""
        return code_ring_bits(self.bits, num_clients)

    def weight_digits(self) -> int:
        """How many ``b``-bit digits a weight up to ``max_weight`` takes."""
        return -(-self.max_weight.bit_length() // self.bits)

    def signs(self) -> torch.Tensor | None:
        """The rotation's random signs (float32 +-1 of the padded length), or None."""
        if self.rotation_seed is None:
            return None
        return random_signs(self.dimension, self.rotation_seed)

    def encode(
        self, contribution: torch.Tensor, generator: torch.Generator
    ) -> tuple[np.ndarray, int]:
        """The codes of one client's contribution (int64) and how many values were clamped
        (its weight included, when capped).

        :raises DataError: for a weight that is not a whole number >= 1.
        """
        weight = float(contribution[-1])
        if not (weight >= 1 and weight.is_integer()):
            raise DataError(f"a contribution of weight {weight:g}, not a whole number >= 1")
        capped = min(weight, float(self.max_weight))
        values = contribution[:-1].to(torch.float64) * (capped / weight / self.max_weight)
        update, statistics = values[: self.dimension], values[self.dimension :]
        signs = self.signs()
        if signs is not None:  # in float32, whose error is far below a grid step
            update = rotate(update.to(torch.float32).reshape(1, -1), signs)[0].double()
        codes, clamped = quantize_to_grid(
            torch.cat([update, statistics]), bits=self.bits, radius=self.radius, generator=generator
        )
        clamped += int(capped < weight)
        digits = [
            int(capped) >> (self.bits * j) & (2**self.bits - 1) for j in range(self.weight_digits())
        ]
        tail = np.array([*digits, min(clamped, 2**self.bits - 1)], dtype=np.int64)
        return np.concatenate([codes.numpy(), tail]), clamped

    def decode(self, total: np.ndarray, count: int) -> tuple[torch.Tensor, int]:
        """The summed contribution ``[w' u, w' s, w']`` (float64) from the sums of ``count``
        clients' codes, and the number of values they clamped."""
        digits = self.weight_digits()
        values = decode_codes(total[: -digits - 1], bits=self.bits, radius=self.radius, count=count)
        values = values * self.max_weight
        signs = self.signs()
        padded = self.dimension if signs is None else len(signs)
        update, statistics = values[:padded], values[padded:]
        if signs is not None:
            update = unrotate(update.reshape(1, -1), signs, self.dimension)[0]
        summed = sum(int(d) << (self.bits * j) for j, d in enumerate(total[-digits - 1 : -1]))
        weight = torch.tensor([float(summed)], dtype=torch.float64)
        return torch.cat([update, statistics, weight]), int(total[-1])


class SharedGrid(Compressor):
    """Unbiased stochastic quantization onto a grid shared by all clients, which secure
    aggregation can sum in a narrow ring (Suresh et al. 2017).

    :param bits: Bits per coordinate (1 to 16): ``2**bits`` levels over ``[-range, range]``.
    :param range: ``R``: coordinates are clamped to ``[-R, R]`` (the count is in the
        round's record under secure aggregation); under secure aggregation the smaller
        bound that the privacy mechanisms declare (DP's clip norm) replaces it.
    :param rotation: Rotate every update by one seeded random Hadamard rotation per round,
        the same for all clients, before quantizing (the server un-rotates).
    :param max_weight: Under secure aggregation with example-count weights (FedAvg's),
        the largest weight a client contributes with: a client with more examples counts
        as this many (counted as clamped). The ring grows by about ``log2(max_weight)``
        bits; unset: such weights are refused (weight-1 contributions, as under
        client-level DP, need none).
    """

    name = "shared-grid"
    flags = MappingProxyType({"bits": "--compress-bits", "rotation": "--rotation"})
    sums_in_ring = True

    def __init__(
        self,
        bits: int = 8,
        range: float = 1.0,
        rotation: bool = False,
        max_weight: int | None = None,
    ) -> None:
        self.bits = check_code_bits(bits)
        if isinstance(range, bool) or not (isinstance(range, (int, float)) and 0 < range < 1e30):
            raise ConfigError("range", range, "a finite number > 0")
        if not isinstance(rotation, bool):
            raise ConfigError("rotation", rotation, "true or false")
        if max_weight is not None and (
            isinstance(max_weight, bool) or not (isinstance(max_weight, int) and max_weight >= 1)
        ):
            raise ConfigError("max_weight", max_weight, "an integer >= 1, or unset")
        self.range = float(range)
        self.rotation = rotation
        self.max_weight = max_weight

    def coding(self, *, round: int, radius: float, unit_weights: bool = True) -> GridCoding:
        """The round's :class:`GridCoding` over ``[-radius, radius]`` (``radius`` at most
        ``range``; secure aggregation passes the declared bound when it is smaller), for
        weight-1 contributions or, with ``unit_weights`` false, weights up to ``max_weight``.

        :raises ConfigError: for example-count weights without ``max_weight``.
        """
        if not unit_weights and self.max_weight is None:
            raise ConfigError(
                "max_weight",
                None,
                f"a bound on any client's example count for {self.name} under secure "
                "aggregation with example-count weights (FedAvg's): clients weight their "
                "update before quantizing and sum the weights in a ring sized before the "
                f"round (--option {self.name}.max_weight=N); or use client-level DP "
                "(--dp), whose clients contribute with weight 1",
            )
        seed = derive_seed(self.seed, "rotation", round) if self.rotation else None
        weight = 1 if unit_weights or self.max_weight is None else self.max_weight
        return GridCoding(self.bits, min(radius, self.range), self.dimension, seed, weight)

    def client_config(self, *, round: int) -> dict[str, Any]:
        coding = self.coding(round=round, radius=self.range)
        return {} if coding.rotation_seed is None else {"rotation_seed": coding.rotation_seed}

    def encode(
        self,
        update: torch.Tensor,
        *,
        config: Mapping[str, Any],
        generator: torch.Generator,
        state: dict[str, torch.Tensor],
    ) -> bytes:
        coding = self._coding(config)
        values = update.to(torch.float32).reshape(1, -1)
        signs = coding.signs()
        if signs is not None:  # in float32, whose error is far below a grid step
            values = rotate(values, signs)
        codes, _ = quantize_to_grid(values, bits=self.bits, radius=self.range, generator=generator)
        return pack_bits(codes, self.bits)

    def decode(self, data: bytes, *, config: Mapping[str, Any]) -> torch.Tensor:
        coding = self._coding(config)
        signs = coding.signs()
        count = self.dimension if signs is None else len(signs)
        if len(data) != packed_size(count, self.bits):
            raise ValueError(
                f"{len(data)} bytes, not the {packed_size(count, self.bits)} of shared-grid"
            )
        codes = unpack_bits(data, self.bits, count)
        values = decode_codes(codes.numpy(), bits=self.bits, radius=self.range, count=1)
        if signs is not None:
            values = unrotate(values.reshape(1, -1), signs, self.dimension)[0]
        return values.to(torch.float32)

    def _coding(self, config: Mapping[str, Any]) -> GridCoding:
        seed = config.get("rotation_seed")
        if self.rotation and not isinstance(seed, int):
            raise ValueError(f"rotation_seed {seed!r} is not a seed")
        return GridCoding(self.bits, self.range, self.dimension, seed if self.rotation else None)
