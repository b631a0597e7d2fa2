"""Stochastic quantization onto a grid that every client of a round shares: codes that add up.

Secure aggregation sums whatever the clients encode, so an encoding composes with it
only if the sum of the clients' codes is the code of the sum (a linear encoding).
Per-client scales (QSGD's norm), indices (top-k) or seeds (random masks) are not;
integers on one grid, the same for every client of the round, are:

- **Grid**: ``2^b`` levels ``-R + j s`` (``j = 0 .. 2^b - 1``, step
  ``s = 2R / (2^b - 1)``) over a range ``[-R, R]`` fixed before the round (from a bound
  the privacy mechanisms declare, such as DP's clip norm, or the quantizer's option).
- **Unbiased stochastic rounding** (Suresh, Yu, Kumar, McMahan 2017, "Distributed Mean
  Estimation with Limited Communication", ICML, Section 3's stochastic k-level
  quantization with a range shared by all clients): a value ``x`` in ``[-R, R]``
  becomes the code ``j`` of the level just below it, plus one with probability equal
  to its distance from that level in steps, so ``E[-R + s q(x)] = x`` and the error of
  each coordinate has variance at most ``s^2 / 4``. Values outside the range are
  clamped first (and counted).
- **Optional shared rotation**: a randomized Hadamard rotation with signs from a seed
  of the round, the same for every client, applied before quantizing; it is linear,
  so the server un-rotates the decoded sum (Suresh et al. 2017; Konečný et al. 2016).
- **Sum**: ``n`` clients' codes add to an integer below ``n (2^b - 1)``, which fits a
  ring ``Z_2^k`` of ``k = bit_length(n (2^b - 1)) <= b + ceil(log2(n + 1))`` bits
  (:func:`code_ring_bits`), and decodes as ``s * sum - n R`` (:func:`decode_codes`).
  Masks then need only ``k`` bits a value (see :mod:`.encoding`), so what a client
  sends shrinks with the codes.

The secure sum therefore equals the plain sum of the same clients' codes bit for bit,
and its decoding the decoding of that plain integer sum.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privfl.errors import ConfigError

MAX_CODE_BITS = 16
"""The most bits per code: beyond it the ring of a large round exceeds 32 bits and the
grid is finer than float32 resolves near R."""


def check_code_bits(bits: int) -> int:
    """``bits`` when it is an integer from 1 to :data:`MAX_CODE_BITS`.

    :raises ConfigError: naming ``bits`` otherwise.
    """
    if isinstance(bits, bool) or not (isinstance(bits, int) and 1 <= bits <= MAX_CODE_BITS):
        raise ConfigError("bits", bits, f"an integer from 1 to {MAX_CODE_BITS}")
    return bits


def grid_step(bits: int, radius: float) -> float:
    """The step ``s = 2R / (2^b - 1)`` between the levels of the grid over ``[-R, R]``."""
    check_code_bits(bits)
    if not (math.isfinite(radius) and radius > 0):
        raise ConfigError("radius", radius, "a finite number > 0")
    return 2.0 * radius / (2**bits - 1)


def quantize_to_grid(
    x: torch.Tensor, *, bits: int, radius: float, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Unbiased stochastic rounding of every value of ``x`` onto the shared grid.

    :param x: Values of any shape (float32 or float64).
    :param bits: ``b``: codes are integers in ``[0, 2^b)``.
    :param radius: ``R``: the grid spans ``[-R, R]``; values beyond it are clamped.
    :param generator: The randomness of the rounding.
    :returns: The codes (int64, the shape of ``x``) and how many values were clamped.
    """
    step = grid_step(bits, radius)
    values = x.detach().to(torch.float64)
    clamped = int(torch.count_nonzero(values.abs() > radius))
    # Computed in float64: a float32 value's position on the grid is then exact to
    # about 2^-40 steps, so the rounding probabilities are right to that precision.
    scaled = (values.clamp(-radius, radius) + radius) / step
    lower = scaled.floor().clamp_(max=2**bits - 1)
    up = torch.rand(values.shape, generator=generator, dtype=torch.float64) < (scaled - lower)
    return (lower + up.to(torch.float64)).to(torch.int64), clamped


def decode_codes(
    total: torch.Tensor | np.ndarray, *, bits: int, radius: float, count: float
) -> torch.Tensor:
    """The sum of ``count`` clients' dequantized values from the sum of their codes:
    ``s * total - count * R`` (float64), exactly linear in the codes.

    :param total: The integer sum of the codes (any integer dtype).
    :param count: The number of codes summed per value (the survivors of a round).
    """
    step = grid_step(bits, radius)
    codes = torch.as_tensor(np.asarray(total).astype(np.int64))
    return codes.to(torch.float64) * step - count * radius


def code_ring_bits(bits: int, num_clients: int) -> int:
    """The fewest ring bits ``k`` that hold the sum of ``num_clients`` codes of ``bits`` bits.

    The sum is at most ``n (2^b - 1)``, which is below ``2^k`` exactly when
    ``bit_length(n (2^b - 1)) <= k``; this is at most ``b + ceil(log2(n + 1))``.

    :raises ConfigError: for bad ``bits``, fewer than one client, or a sum over 64 bits.
    """
    check_code_bits(bits)
    if isinstance(num_clients, bool) or not (isinstance(num_clients, int) and num_clients >= 1):
        raise ConfigError("num_clients", num_clients, "an integer >= 1")
    k = (num_clients * (2**bits - 1)).bit_length()
    if k > 64:
        raise ConfigError(
            "bits", bits, f"fewer bits: the sum of {num_clients} codes needs {k} ring bits"
        )
    return k
