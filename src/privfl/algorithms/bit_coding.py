"""Compact byte formats for compressed updates, as pure functions.

- **Bit packing** of ``b``-bit integers into bytes, compiled, so that a ``b``-bit
  code costs ``b`` bits on the wire, not a float.
- **Index sets** (the coordinates a sparse update sends) as packed absolute indices or
  as their gaps in a Rice code (Golomb 1966; Rice 1979), whichever is shorter.

:mod:`privfl.algorithms.compression` holds the compressors' math;
:mod:`privfl.builtin.compressors` lays out their messages with these functions.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


def pack_bits(values: torch.Tensor, bits: int) -> bytes:
    """Pack non-negative integers below ``2**bits`` into ``ceil(count * bits / 8)`` bytes,
    least significant bit first: code ``i`` holds bits ``i * bits`` to ``(i + 1) * bits - 1``.

    One compiled pass (``_pack_codes``): codes of 1, 2, 4 or 8 bits fill a byte
    ``8 / bits`` at a time (numpy's shift-ors over padded words took 0.044 ms for the
    2NN's 199,232 two-bit codes, this 0.012); other widths go through a 64-bit
    accumulator, four bytes at a time (0.14 ms for 199,232 three-bit codes, where
    numpy's shifts of uint64 groups took 0.43, and 0.21 for twelve-bit codes, where
    splitting them into bits took 2.4).

    :raises ValueError: for ``bits`` outside 1 to 32.
    """
    _code_width(bits)
    codes = np.ascontiguousarray(values.reshape(-1).numpy())
    out = np.empty(packed_size(len(codes), bits), dtype=np.uint8)
    _pack_codes(codes, bits, out)
    return out.tobytes()


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _pack_codes(codes, bits, out):
    """:func:`pack_bits`' bytes of ``codes`` (``bits`` from 1 to 32) into ``out``, which
    holds exactly :func:`packed_size` bytes."""
    if 8 % bits == 0:
        _pack_bytes(codes, 8 // bits, out)
        return
    width, mask = np.uint64(bits), np.uint64((1 << bits) - 1)
    byte = np.uint64(0xFF)
    pending, held, at = np.uint64(0), np.uint64(0), 0  # bits waiting, how many, next byte
    for i in range(codes.size):
        pending |= (np.uint64(codes[i]) & mask) << held
        held += width
        if held >= np.uint64(32):
            for q in range(4):
                out[at + q] = np.uint8(pending >> np.uint64(8 * q) & byte)
            pending >>= np.uint64(32)
            held -= np.uint64(32)
            at += 4
    while at < out.size:
        out[at] = np.uint8(pending & byte)
        pending >>= np.uint64(8)
        at += 1


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _pack_bytes(codes, per_byte, out):
    """``out[j] =`` the ``per_byte`` codes ``codes[j * per_byte ...]`` of ``8 / per_byte``
    bits each, the first in the lowest bits; a last byte that has fewer codes is padded
    with zero bits. Each count has its own loop, with the shifts as constants, so that
    they vectorize (one loop over a variable count took five times as long)."""
    full = codes.size // per_byte
    c = codes
    if per_byte == 8:
        for j in range(full):
            i = 8 * j
            out[j] = np.uint8(
                c[i] | c[i + 1] << 1 | c[i + 2] << 2 | c[i + 3] << 3
                | c[i + 4] << 4 | c[i + 5] << 5 | c[i + 6] << 6 | c[i + 7] << 7
            )  # fmt: skip
    elif per_byte == 4:
        for j in range(full):
            i = 4 * j
            out[j] = np.uint8(c[i] | c[i + 1] << 2 | c[i + 2] << 4 | c[i + 3] << 6)
    elif per_byte == 2:
        for j in range(full):
            out[j] = np.uint8(c[2 * j] | c[2 * j + 1] << 4)
    else:
        for j in range(full):
            out[j] = np.uint8(c[j])
    if full < out.size:  # the last, partly filled byte
        last = 0
        for i in range(full * per_byte, codes.size):
            last |= c[i] << (i - full * per_byte) * (8 // per_byte)
        out[full] = np.uint8(last)


def unpack_bits(data: bytes, bits: int, count: int) -> torch.Tensor:
    """Return the ``count`` integers of ``bits`` bits each that :func:`pack_bits` packed."""
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes hold no {count} codes of {bits} bits ({expected})")
    raw = np.frombuffer(data, dtype=np.uint8)
    if 8 % bits == 0:
        codes = np.empty(count, np.int64)
        _unpack_bytes(raw, bits, codes)
        return torch.from_numpy(codes)
    if bits < 8:  # the inverse of pack_bits' uint64 groups
        _code_width(bits)
        groups = -(-count // 8)
        words = np.zeros((groups, 8), dtype=np.uint8)
        words[:, :bits] = np.pad(raw, (0, groups * bits - len(raw))).reshape(groups, bits)
        word = words.view("<u8").reshape(-1)
        shifts = np.arange(0, 8 * bits, bits, dtype=np.uint64)
        codes = (word[:, None] >> shifts) & np.uint64((1 << bits) - 1)
        return torch.from_numpy(codes.reshape(-1)[:count].astype(np.int64))
    width = _code_width(bits)
    planes = np.zeros((count, 8 * width), dtype=np.uint8)
    planes[:, :bits] = np.unpackbits(raw, count=count * bits, bitorder="little").reshape(
        count, bits
    )
    codes = np.packbits(planes, axis=1, bitorder="little").view(f"<u{width}").reshape(count)
    return torch.from_numpy(codes.astype(np.int64))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _unpack_bytes(raw, bits, codes):
    """``codes[i] =`` the ``i``-th code of ``bits`` bits (1, 2, 4 or 8) of ``raw``, the
    first in each byte's lowest bits: the inverse of :func:`_pack_bytes`, one pass over
    whole bytes with constant shifts (as there), then the last byte's codes."""
    per_byte = 8 // bits
    full = codes.size // per_byte
    if bits == 1:
        for j in range(full):
            for q in range(8):
                codes[8 * j + q] = raw[j] >> q & 1
    elif bits == 2:
        for j in range(full):
            for q in range(4):
                codes[4 * j + q] = raw[j] >> 2 * q & 3
    elif bits == 4:
        for j in range(full):
            codes[2 * j] = raw[j] & 15
            codes[2 * j + 1] = raw[j] >> 4
    else:
        for j in range(full):
            codes[j] = raw[j]
    for i in range(full * per_byte, codes.size):
        codes[i] = raw[full] >> (i - full * per_byte) * bits & (1 << bits) - 1


def _code_width(bits: int) -> int:
    """Bytes of the smallest unsigned integer type that holds ``bits`` bits."""
    if not 1 <= bits <= 32:
        raise ValueError(f"codes of {bits} bits: 1 to 32 are supported")
    return 1 if bits <= 8 else 2 if bits <= 16 else 4


def packed_size(count: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` writes for ``count`` codes of ``bits`` bits."""
    return (count * bits + 7) // 8


def index_bits(dim: int) -> int:
    """Bits of one coordinate index below ``dim``."""
    return max(1, (dim - 1).bit_length())


def pack_index_set(indices: torch.Tensor, dim: int) -> bytes:
    """Sorted distinct coordinates below ``dim`` in few bytes: a tag byte, then either
    each index in ``ceil(log2 dim)`` bits (tag 0), or the gaps between them in a Rice
    code (tag 1, see :func:`rice_encode`), whichever is shorter.

    The gaps of a random set of 3-5% of the coordinates cost 5.8-6.6 bits per index,
    within 2% of the entropy bound ``log2(C(dim, k)) / k``, where absolute indices cost
    18 bits on the 2NN (on its top 5% in training: 6.0, where a bz2-compressed bitmap
    took 5.8 bits and several times as long). One compiled call (``_index_set``).

    :raises ValueError: for indices that are not increasing coordinates below ``dim``.
    """
    positions = np.ascontiguousarray(indices.numpy(), dtype=np.int64)
    data = _index_set(positions, dim, index_bits(dim), RICE_MAX_PARAMETER)
    if not len(data):
        raise ValueError("indices are not increasing coordinates below the dimension")
    return data.tobytes()


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _index_set(positions, dim, width, largest):
    """:func:`pack_index_set`'s bytes of ``positions`` (absolute indices in ``width``
    bits, Rice parameters up to ``largest``), or no bytes where the positions are not
    increasing coordinates below ``dim``."""
    gaps = np.empty(positions.size, np.int64)
    if not _gaps(positions, dim, gaps):
        return np.empty(0, np.uint8)
    rice = _rice_code(gaps, _rice_parameter(gaps, largest) if gaps.size else 0)
    fixed = (positions.size * width + 7) // 8
    if rice.size < fixed:
        out = np.empty(1 + rice.size, np.uint8)
        out[0] = 1
        out[1:] = rice
        return out
    out = np.empty(1 + fixed, np.uint8)
    out[0] = 0
    _pack_codes(positions, width, out[1:])
    return out


def unpack_index_set(data: bytes, dim: int, count: int) -> torch.Tensor:
    """The ``count`` sorted coordinates that :func:`pack_index_set` wrote.

    :raises ValueError: for bytes that do not hold ``count`` distinct coordinates
        below ``dim``, in increasing order.
    """
    if data[:1] == b"\x00":
        indices = unpack_bits(data[1:], index_bits(dim), count)
        if count and (int(indices[-1]) >= dim or bool((indices[1:] <= indices[:-1]).any())):
            raise ValueError("indices are not increasing coordinates below the dimension")
        return indices
    if data[:1] != b"\x01":
        raise ValueError(f"unknown index coding {data[:1]!r}")
    gaps = rice_decode(data[1:], count)
    if count and int(gaps.max()) >= dim:  # also bounds the running sum below 2**63
        raise ValueError(f"a gap of {int(gaps.max())} leaves the {dim} coordinates")
    found = np.cumsum(gaps + 1) - 1
    if count and int(found[-1]) >= dim:
        raise ValueError(f"index {int(found[-1])} is not a coordinate below {dim}")
    return torch.from_numpy(found)


RICE_MAX_PARAMETER = 32
"""The largest Rice parameter: gaps of up to 32 low bits, whose quotients (at most eight
per byte of a message) cannot overflow int64 in :func:`rice_decode`."""


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _gaps(positions, dim, gaps):
    """``gaps[i] = positions[i] - positions[i - 1] - 1`` (the first from -1); whether
    the positions are increasing coordinates below ``dim``. The differences and their
    smallest are separate passes without branches, so that both vectorize (one pass
    that returned at the first negative gap took 8 us for 10,000 positions)."""
    if positions.size == 0:
        return True
    gaps[0] = positions[0]
    for i in range(1, positions.size):
        gaps[i] = positions[i] - positions[i - 1] - 1
    smallest = gaps[0]
    for i in range(gaps.size):
        smallest = gaps[i] if gaps[i] < smallest else smallest
    return smallest >= 0 and positions[positions.size - 1] < dim


def rice_parameter(gaps: np.ndarray) -> int:
    """The Rice parameter ``r`` that codes ``gaps`` in the fewest bits: of the three
    around ``log2`` of their mean (Rice's rule for geometric gaps, where a set of ``k``
    of ``dim`` coordinates has a mean gap of about ``dim / k``), the one whose exact
    cost ``k (r + 1) + sum(gap >> r)`` is smallest (the first of equal ones)."""
    if len(gaps) == 0:
        return 0
    return int(_rice_parameter(np.ascontiguousarray(gaps, dtype=np.int64), RICE_MAX_PARAMETER))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _rice_parameter(gaps, largest):
    """:func:`rice_parameter` of non-empty ``gaps``, in two passes (numpy took five),
    the three costs summed in scalars so that the second pass vectorizes."""
    total = 0
    for i in range(gaps.size):
        total += gaps[i]
    guess = min(largest, int(np.log2(total / gaps.size + 1)))
    low = max(0, guess - 1)
    cost0, cost1, cost2 = 0, 0, 0
    for i in range(gaps.size):
        cost0 += gaps[i] >> low
        cost1 += gaps[i] >> (low + 1)
        cost2 += gaps[i] >> (low + 2)
    costs = (cost0, cost1, cost2)
    best, chosen = -1, low
    for r in range(low, min(largest, guess + 1) + 1):
        cost = gaps.size * r + costs[r - low]
        if best < 0 or cost < best:
            best, chosen = cost, r
    return chosen


def rice_encode(gaps: np.ndarray) -> bytes:
    """Non-negative integers in a Rice code (Golomb 1966, "Run-length encodings", IEEE
    Trans. Inf. Theory 12(3); Rice 1979, "Some practical universal noiseless coding
    techniques", JPL 79-22): the Golomb code with a power-of-two divisor ``2**r``,
    which for geometrically distributed gaps (those of a random sparse set) is within a
    few percent of the entropy.

    Layout: one byte ``r`` (:func:`rice_parameter`), the ``r`` low bits of every value
    packed (:func:`pack_bits`), then every quotient ``value >> r`` in unary, as that
    many 0 bits and a 1, least significant bit first, padded with 0 bits to a byte.
    Keeping the two parts apart costs at most one byte over interleaving them, and
    :func:`rice_decode` reads each part with a few vector operations (the unary part is
    a bitmap whose ones sit at the running sums of ``quotient + 1``). No library we
    depend on has a Rice coder.
    """
    return bytes(_rice_code(np.ascontiguousarray(gaps, dtype=np.int64), rice_parameter(gaps)))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _rice_code(gaps, r):
    """:func:`rice_encode`'s bytes with parameter ``r`` in one compiled call (numpy took
    a dozen calls and a byte per bit of the unary part): the low bits packed as
    :func:`pack_bits` packs codes, then each quotient's one bit set after its zeros."""
    count = gaps.size
    low_bytes = (count * r + 7) // 8 if r else 0
    unary_bits = count
    for i in range(count):
        unary_bits += gaps[i] >> r
    out = np.zeros(1 + low_bytes + (unary_bits + 7) // 8, np.uint8)
    out[0] = r
    if r:
        low = np.empty(count, np.int64)
        mask = (1 << r) - 1
        for i in range(count):
            low[i] = gaps[i] & mask
        _pack_codes(low, r, out[1 : 1 + low_bytes])
    bit = 8 * (1 + low_bytes)
    for i in range(count):  # the quotient's zeros, then a one
        bit += gaps[i] >> r
        out[bit >> 3] |= np.uint8(1 << (bit & 7))
        bit += 1
    return out


def rice_decode(data: bytes, count: int) -> np.ndarray:
    """The ``count`` integers (int64) that :func:`rice_encode` wrote.

    :raises ValueError: for bytes that are not exactly such a code.
    """
    if not data or data[0] > RICE_MAX_PARAMETER:
        raise ValueError(f"a Rice code needs a parameter byte up to {RICE_MAX_PARAMETER}")
    r = data[0]
    size = packed_size(count, r) if r else 0
    if len(data) < 1 + size:
        raise ValueError(f"{len(data)} bytes hold no {count} Rice-coded values")
    unary = np.unpackbits(np.frombuffer(data[1 + size :], dtype=np.uint8), bitorder="little")
    ends = np.flatnonzero(unary)
    if len(ends) != count or len(unary) - (int(ends[-1]) + 1 if count else 0) >= 8:
        raise ValueError(f"the Rice code holds {len(ends)} values, not {count}")
    quotients = np.diff(ends, prepend=-1) - 1
    low = unpack_bits(data[1 : 1 + size], r, count).numpy() if r and count else 0
    return (quotients << r) | low
