"""Fixed-point encoding of real-valued updates into the ring Z_2^k that masks live in.

Pairwise and self masks cancel only in exact arithmetic, so each client rounds its
update to ``frac_bits`` fractional bits and writes it in two's complement into
``Z_2^32`` (``numpy.uint32``) or ``Z_2^64`` (``numpy.uint64``), whose wrap-around
addition numpy does natively. The server decodes the ring sum as a signed number.

The sum is right only if it does not wrap. :func:`encode` clamps every value to
``[-bound, bound]``, so each encoded value has magnitude at most
``B = ceil(bound 2^frac_bits)`` (:func:`encoded_bound`), and the sum of ``n`` clients'
values lies in ``[-n B, n B]``: :func:`required_bits` counts the bits that holds and
:func:`ring_bits_for` picks the ring, both before a round (the server knows ``n``).
How small ``bound`` can be without clamping real values is :func:`clamp_bound`'s
question: it depends on the weights and on what the privacy mechanisms declare.

Inputs that are already non-negative integers (the codes of
:mod:`privfl.secagg.quantization`) can be summed in a narrower ring ``Z_2^k`` for any
``k`` from 1 to 64: vectors hold it in ``uint32`` (``k <= 32``) or ``uint64`` words
(:func:`word_dtype`), arithmetic runs modulo the word and is reduced modulo ``2^k``
(which divides the word's modulus, so the reduction commutes with every sum), and
:func:`pack_ring` writes ``k`` bits per value on the wire.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from privfl.errors import ConfigError, DataError

RING_DTYPES: dict[int, np.dtype] = {32: np.dtype(np.uint32), 64: np.dtype(np.uint64)}
_SIGNED = {32: np.int32, 64: np.int64}
FLOAT32_SLACK = 2.0**-20
"""Relative room :func:`clamp_bound` leaves above a declared bound: 8 units in the last
place of a float32 (whose relative spacing is at most 2^-23)."""


def ring_dtype(ring_bits: int) -> np.dtype:
    """The numpy dtype of ``Z_2^ring_bits``: ``uint32`` for 32 bits, ``uint64`` for 64."""
    if ring_bits not in RING_DTYPES:
        raise ConfigError("ring_bits", ring_bits, "32 or 64")
    return RING_DTYPES[ring_bits]


def word_dtype(ring_bits: int) -> np.dtype:
    """The numpy dtype that holds ``Z_2^ring_bits``: ``uint32`` up to 32 bits, else ``uint64``."""
    if isinstance(ring_bits, bool) or not (isinstance(ring_bits, int) and 1 <= ring_bits <= 64):
        raise ConfigError("ring_bits", ring_bits, "an integer from 1 to 64")
    return RING_DTYPES[32 if ring_bits <= 32 else 64]


def reduce_ring(vector: np.ndarray, ring_bits: int) -> None:
    """Reduce a ring vector modulo ``2^ring_bits`` in place (nothing to do for a full word)."""
    if ring_bits < vector.dtype.itemsize * 8:
        np.bitwise_and(vector, vector.dtype.type((1 << ring_bits) - 1), out=vector)


def pack_ring(vector: np.ndarray, ring_bits: int) -> memoryview:
    """The values of ``vector`` (each below ``2^ring_bits``) in ``ring_bits`` bits each.

    32- and 64-bit rings travel as the little-endian words themselves, without a copy.
    Narrower ones travel as one stream of ``ceil(size * ring_bits / 8)`` bytes, value
    ``i`` in its bits ``i * ring_bits`` to ``(i + 1) * ring_bits - 1``, least significant
    first (numpy's ``bitorder="little"``): eight values fill exactly ``ring_bits`` bytes,
    so each group of eight is shifted into ``ceil(ring_bits / 8)`` little-endian uint64
    lanes, a few vector operations whatever the size. Written here rather than with
    :func:`privfl.algorithms.bit_coding.pack_bits` because ring vectors are numpy words
    of up to 64 bits, where that one takes torch codes of at most 32.
    """
    words = np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<"))
    width = words.dtype.itemsize * 8
    if not 1 <= ring_bits <= width:
        raise ConfigError("ring_bits", ring_bits, f"1 to {width} for {vector.dtype} words")
    if ring_bits == width:
        return words.data.cast("B")
    groups = np.zeros((-(-words.size // 8), 8), dtype=np.uint64)
    groups.reshape(-1)[: words.size] = words
    lanes = np.zeros((len(groups), -(-ring_bits // 8)), dtype="<u8")
    for j, (lane, shift, spill) in enumerate(_lane_layout(ring_bits)):
        lanes[:, lane] |= groups[:, j] << np.uint64(shift)
        if spill:  # the value's high bits continue in the next lane
            lanes[:, lane + 1] |= groups[:, j] >> np.uint64(64 - shift)
    packed = lanes.view(np.uint8)[:, :ring_bits].reshape(-1)[
        : packed_ring_size(words.size, ring_bits)
    ]
    return np.ascontiguousarray(packed).data.cast("B")


def _lane_layout(ring_bits: int) -> list[tuple[int, int, bool]]:
    """For each of eight values in a group: its uint64 lane, its shift in the lane, and
    whether it spills into the next lane."""
    starts = [j * ring_bits for j in range(8)]
    return [(p // 64, p % 64, p % 64 + ring_bits > 64) for p in starts]


def packed_ring_size(size: int, ring_bits: int) -> int:
    """Bytes that :func:`pack_ring` writes for ``size`` values of a ``ring_bits``-bit ring."""
    return (size * ring_bits + 7) // 8


def unpack_ring(data: memoryview | bytes, ring_bits: int, size: int) -> np.ndarray:
    """The ``size`` values that :func:`pack_ring` wrote, as a native :func:`word_dtype` vector.

    :raises ValueError: when ``data`` does not have :func:`packed_ring_size` bytes.
    """
    dtype = word_dtype(ring_bits)
    if len(data) != packed_ring_size(size, ring_bits):
        raise ValueError(
            f"{len(data)} bytes hold no {size} values of {ring_bits} bits "
            f"({packed_ring_size(size, ring_bits)})"
        )
    width = dtype.itemsize * 8
    if ring_bits == width:  # a read-only view of ``data``, not a copy
        words = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
        return words.astype(dtype, copy=False)
    count = -(-size // 8)
    raw = np.zeros(count * ring_bits, dtype=np.uint8)
    raw[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    padded = np.zeros((count, 8 * -(-ring_bits // 8)), dtype=np.uint8)
    padded[:, :ring_bits] = raw.reshape(count, ring_bits)
    lanes = padded.view("<u8")
    groups = np.empty((count, 8), dtype=np.uint64)
    mask = np.uint64((1 << ring_bits) - 1)
    for j, (lane, shift, spill) in enumerate(_lane_layout(ring_bits)):
        groups[:, j] = lanes[:, lane] >> np.uint64(shift)
        if spill:
            groups[:, j] |= lanes[:, lane + 1] << np.uint64(64 - shift)
        groups[:, j] &= mask
    return groups.reshape(-1)[:size].astype(dtype)


def encoded_bound(bound: float, frac_bits: int) -> int:
    """``B = ceil(bound * 2^frac_bits)``: no value encoded with this clamp and scale exceeds it.

    A value ``v`` with ``|v| <= bound`` becomes ``rint(v 2^frac_bits)``, which is
    ``floor`` or ``ceil`` of ``v 2^frac_bits``, so its magnitude is at most ``B``.
    """
    _check_scale(bound, frac_bits)
    return math.ceil(bound * 2.0**frac_bits)


def required_bits(bound: float, frac_bits: int, num_clients: int) -> int:
    """The fewest ring bits for which the sum of ``num_clients`` encoded values cannot wrap.

    Each encoded value lies in ``[-B, B]`` (:func:`encoded_bound`), so the sum of
    ``num_clients`` of them lies in ``[-n B, n B]``. A ``k``-bit ring read in two's
    complement holds ``[-2^(k-1), 2^(k-1) - 1]``, and ``n B <= 2^(k-1) - 1`` exactly
    when ``bit_length(n B) <= k - 1``: the sum needs ``bit_length(n B) + 1`` bits.

    :raises ConfigError: for a non-positive bound, ``frac_bits`` outside [0, 63], fewer than one
        client, or when more than 64 bits would be needed (the largest ring here).
    """
    largest = encoded_bound(bound, frac_bits)
    if not (isinstance(num_clients, int) and num_clients >= 1):
        raise ConfigError("num_clients", num_clients, "an integer >= 1")
    bits = (num_clients * largest).bit_length() + 1
    if bits > 64:
        raise ConfigError(
            "frac_bits",
            frac_bits,
            f"the sum of {num_clients} values with |v| <= {bound} at {frac_bits} fractional "
            f"bits needs a {bits}-bit ring, more than 64: lower frac_bits or the bound",
        )
    return bits


def ring_bits_for(
    bound: float, frac_bits: int, num_clients: int, *, requested: int | None = None
) -> int:
    """The round's ring: the smaller of 32 and 64 bits that holds the sum, or ``requested``.

    :param requested: A ring the user chose (32 or 64), or None to choose.
    :raises ConfigError: as :func:`required_bits` does, and naming ``ring_bits`` when
        ``requested`` is narrower than the sum needs (see :func:`required_bits`).
    """
    bits = required_bits(bound, frac_bits, num_clients)
    if requested is None:
        return 32 if bits <= 32 else 64
    ring_dtype(requested)
    if bits > requested:
        raise ConfigError(
            "ring_bits",
            requested,
            f"a ring of at least {bits} bits for the sum of {num_clients} clients' values "
            f"with |v| <= {bound:g} at {frac_bits} fractional bits: set ring_bits = 64, or "
            "leave it unset to pick the ring per round, or lower frac_bits or the bound "
            "(a smaller clip norm for DP)",
        )
    return requested


def clamp_bound(bound: float, declared: float | None, *, unit_weights: bool) -> float:
    """The clamping bound of a round: the smallest that clamps no value the bounds allow.

    A client's contribution is ``[w u, w s, w]``: its update ``u`` and statistics ``s``
    weighted by ``w``, then ``w`` itself (the server divides the sums by the summed
    weights). ``declared`` bounds every coordinate of ``u`` and every value of ``s``,
    as the privacy mechanisms state it (DP's clip norm C bounds each coordinate by C,
    since an L2 norm bounds every coordinate); None means no mechanism bounds them.

    * Unit weights (``w = 1``, as under client-level DP): every value of the
      contribution has magnitude at most ``max(declared, 1)``, and clamping there
      changes nothing.
    * Example-count weights (``w`` = the client's number of examples): ``w u`` is
      bounded by ``w * declared``, but the server learns ``w`` only from the
      clients' replies, after the ring is chosen, so no bound follows.

    Updates are float32, and float32 arithmetic can leave a value that is at most
    ``declared`` in exact arithmetic a few units in the last place above it (clipping
    scales by ``C / norm`` in float32), so the result is ``max(declared, 1)`` raised by
    :data:`FLOAT32_SLACK`, relative. The user's ``bound`` caps the result: it is kept
    when nothing smaller follows, and wins when it is smaller (values beyond it are
    clamped and counted).
    """
    _check_scale(bound, 0)
    if declared is not None and not declared >= 0:
        raise ConfigError("value_bound", declared, "a number >= 0, or None for no bound")
    if declared is None or not unit_weights:
        return bound
    return min(bound, max(declared, 1.0) * (1 + FLOAT32_SLACK))


def encode(
    values: torch.Tensor | np.ndarray,
    *,
    frac_bits: int,
    bound: float,
    dtype: np.dtype | type,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Clamp ``values`` to ``[-bound, bound]``, round to ``frac_bits`` bits, map into the ring.

    :param values: A float tensor or array (any shape; the result is flat).
    :param frac_bits: Fractional bits kept: values are multiplied by ``2^frac_bits`` and
        rounded to the nearest integer (the error is at most ``2^-(frac_bits + 1)``).
    :param bound: The clamping bound, for example the clipping norm of the update.
    :param dtype: ``numpy.uint32`` or ``numpy.uint64``, the ring of the round.
    :param out: A 1-D vector of ``dtype`` with one place per value to write the result
        into, or None for a new one.
    :returns: The ring vector (``out`` if given) and the number of values that were clamped.
    :raises ConfigError: for a bad scale, a bound that does not fit the ring even for
        one client, or an ``out`` of the wrong dtype or size.
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
    values = np.asarray(values).reshape(-1)
    # Float32 values (updates) are encoded in float32: scaling by 2^frac_bits is exact
    # in any binary format, and so is rounding the product to an integer, so this gives
    # the float64 path's integers in half the memory traffic. Anything else is float64.
    real = np.dtype(np.float32 if values.dtype == np.float32 else np.float64)
    values = values.astype(real, copy=False)  # not changed below
    if out is None:
        out = np.empty(values.size, dtype=dtype)
    elif out.dtype != dtype or out.shape != values.shape:
        raise ConfigError("out", f"{out.shape} {out.dtype}", f"a vector of {values.size} {dtype}")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):  # min and max keep a NaN
        raise DataError("secure aggregation cannot encode NaN or infinite values")
    scale = real.type(2.0**frac_bits)
    signed = out.view(_SIGNED[bits])
    clamped = 0
    if low < -bound or high > bound:
        # The largest value of the format at most ``bound``: a value of the format is
        # above ``bound`` exactly when it is above ``limit``.
        limit = real.type(bound)
        if float(limit) > bound:  # rounded up into the format
            limit = np.nextafter(limit, real.type(0))
        over, under = values > limit, values < -limit
        clamped = int(np.count_nonzero(over)) + int(np.count_nonzero(under))
        work = np.clip(values, -limit, limit)
        work *= scale
    else:
        work = values * scale
    np.rint(work, out=work)
    # |work| < 2^(bits-1) by the check above: the signed cast is exact, and the signed
    # view of ``out`` writes the two's complement.
    np.copyto(signed, work, casting="unsafe")
    if clamped:  # exactly +-bound, as the float64 path rounds it
        edge = int(np.rint(bound * 2.0**frac_bits))
        signed[over] = edge
        signed[under] = -edge
    return out, clamped


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
