"""Fixed-point encoding of real-valued updates into the ring Z_2^k that masks live in.

Pairwise and self masks cancel only in exact arithmetic, so each client rounds its
update to ``frac_bits`` fractional bits and writes it in two's complement into
``Z_2^32`` (``numpy.uint32``) or ``Z_2^64`` (``numpy.uint64``), whose wrap-around
addition numpy does natively. The server decodes the ring sum as a signed number.

The sum is right only if it does not wrap: with ``n`` clients whose values are clamped
to ``|v| <= bound``, the sum lies in ``[-n B, n B]`` for ``B = ceil(bound 2^frac_bits)``
and needs the bits that :func:`required_bits` returns. This check is the caller's to
make before a round (it knows ``n``); :func:`encode` clamps every value to the bound and
counts how many it clamped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privfl.errors import ConfigError, DataError

RING_DTYPES: dict[int, np.dtype] = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}
_SIGNED = {32: np.int32, 64: np.int64}


def ring_dtype(ring_bits: int) -> np.dtype:
    """The numpy dtype of ``Z_2^ring_bits``: ``uint32`` for 32 bits, ``uint64`` for 64."""
    if ring_bits not in RING_DTYPES:
        raise ConfigError("ring_bits", ring_bits, "32 or 64")
    return RING_DTYPES[ring_bits]


def required_bits(bound: float, frac_bits: int, num_clients: int) -> int:
    """The fewest ring bits for which the sum of ``num_clients`` encoded values cannot wrap.

    Each encoded value has magnitude at most ``B = ceil(bound * 2^frac_bits)``; the sum
    of ``num_clients`` of them needs ``bit_length(num_clients * B)`` bits plus a sign bit.

    :raises ConfigError: for a non-positive bound, ``frac_bits`` outside [0, 63], fewer than one
        client, or when more than 64 bits would be needed (the largest ring here).
    """
    _check_scale(bound, frac_bits)
    if not (isinstance(num_clients, int) and num_clients >= 1):
        raise ConfigError("num_clients", num_clients, "an integer >= 1")
    bits = (num_clients * math.ceil(bound * 2.0**frac_bits)).bit_length() + 1
    if bits > 64:
        raise ConfigError(
            "frac_bits",
            frac_bits,
            f"the sum of {num_clients} values with |v| <= {bound} at {frac_bits} fractional "
            f"bits needs a {bits}-bit ring, more than 64: lower frac_bits or the bound",
        )
    return bits


def ring_bits_for(bound: float, frac_bits: int, num_clients: int) -> int:
    """The smaller ring, 32 or 64 bits, that holds the sum (see :func:`required_bits`)."""
    return 32 if required_bits(bound, frac_bits, num_clients) <= 32 else 64


def encode(
    values: torch.Tensor | np.ndarray, *, frac_bits: int, bound: float, dtype: np.dtype | type
) -> tuple[np.ndarray, int]:
    """Clamp ``values`` to ``[-bound, bound]``, round to ``frac_bits`` bits, map into the ring.

    :param values: A float tensor or array (any shape; the result is flat).
    :param frac_bits: Fractional bits kept: values are multiplied by ``2^frac_bits`` and
        rounded to the nearest integer (the error is at most ``2^-(frac_bits + 1)``).
    :param bound: The clamping bound, for example the clipping norm of the update.
    :param dtype: ``numpy.uint32`` or ``numpy.uint64``, the ring of the round.
    :returns: The ring vector and the number of values that were clamped.
    :raises ConfigError: for a bad scale, or a bound that does not fit the ring even for
        one client.
    :raises DataError: for NaN or infinite values.
    """
    dtype = np.dtype(dtype)
    bits = {d: b for b, d in RING_DTYPES.items()}.get(dtype)
    if bits is None:
        raise ConfigError("dtype", dtype, "numpy.uint32 or numpy.uint64")
    if required_bits(bound, frac_bits, 1) > bits:
        raise ConfigError(
            "bound", bound, f"|v| * 2^{frac_bits} must fit a {bits}-bit ring in two's complement"
        )
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    work = np.array(values, dtype=np.float64).reshape(-1)  # a copy, changed in place below
    magnitude = np.abs(work)
    if work.size and not np.isfinite(magnitude.max()):
        raise DataError("secure aggregation cannot encode NaN or infinite values")
    clamped = int(np.count_nonzero(magnitude > bound))
    np.clip(work, -bound, bound, out=work)
    work *= 2.0**frac_bits
    np.rint(work, out=work)
    # |work| < 2^(bits-1) by the check above: the signed cast is exact, the view is the
    # two's complement.
    return work.astype(_SIGNED[bits]).view(dtype), clamped


def decode(sum_array: np.ndarray, *, frac_bits: int) -> np.ndarray:
    """Read a ring vector (uint32 or uint64) as signed fixed point; return float64 values."""
    array = np.asarray(sum_array)
    bits = {d: b for b, d in RING_DTYPES.items()}.get(array.dtype)
    if bits is None:
        raise ConfigError("sum_array.dtype", array.dtype, "numpy.uint32 or numpy.uint64")
    if not (isinstance(frac_bits, int) and 0 <= frac_bits < 64):
        raise ConfigError("frac_bits", frac_bits, "an integer in [0, 63]")
    return array.view(_SIGNED[bits]).astype(np.float64) / 2.0**frac_bits


def _check_scale(bound: float, frac_bits: int) -> None:
    if not (isinstance(frac_bits, int) and 0 <= frac_bits < 64):
        raise ConfigError("frac_bits", frac_bits, "an integer in [0, 63]")
    if not (math.isfinite(bound) and bound > 0):
        raise ConfigError("bound", bound, "a finite number > 0")
