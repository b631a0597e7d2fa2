"""Compression of client updates as pure math, on stacked ``[n_clients, dim]`` tensors.

- **QSGD** (Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, "QSGD: Communication-Efficient
  SGD via Gradient Quantization and Encoding", NeurIPS): each coordinate of ``v`` becomes
  ``||v|| * sign(v_i) * xi_i``, where ``xi_i`` rounds ``s * |v_i| / ||v||`` to one of
  the two nearest of ``s`` levels at random, so that ``E[Q(v)] = v`` (unbiased) and
  ``E||Q(v) - v||^2 <= min(d / s^2, sqrt(d) / s) * ||v||^2`` (their Lemma 3.1).
- **Randomized Hadamard rotation** (Suresh, Yu, Kumar, McMahan 2017, "Distributed Mean
  Estimation with Limited Communication", ICML; also Konečný et al. 2016): multiplying
  by random signs and then by the orthonormal Walsh-Hadamard matrix spreads a vector's
  mass over all coordinates, so few-bit quantization loses less; the rotation is
  orthogonal and its own inverse up to the signs.
- **Top-k with error feedback** (Stich, Cordonnier, Jaggi 2018, "Sparsified SGD with
  Memory", NeurIPS; Karimireddy, Rebjock, Stich, Jaggi 2019, "Error Feedback Fixes
  SignSGD and other Gradient Compression Schemes", ICML): send the ``k`` largest
  coordinates of ``update + residual`` and keep what was not sent as the next
  residual, so ``sent + new residual = update + old residual``.
- **Random-mask subsampling** (Konečný, McMahan, Yu, Richtárik, Suresh, Bacon 2016,
  "Federated Learning: Strategies for Improving Communication Efficiency"): a client
  sends the values of a seeded random subset of coordinates; scaled by ``dim / k`` the
  server's estimate is unbiased.
- **Bit packing** of ``b``-bit integers into bytes (vector shifts), so a
  ``b``-bit code costs ``b`` bits on the wire, not a float; sets of coordinates as
  packed indices or a bz2-compressed bitmap, whichever is shorter.

Nothing here keeps state or knows about rounds; :mod:`privfl.builtin.compressors`
adapts these functions to the client and server halves.
"""

from __future__ import annotations

import bz2
import math
from collections.abc import Sequence

import numpy as np
import torch

MIN_BLOCK = 64
"""The smallest Hadamard block: vectors are padded to a multiple of it (see
:func:`hadamard_blocks`)."""

# --- Bit packing ------------------------------------------------------------------------


def pack_bits(values: torch.Tensor, bits: int) -> bytes:
    """Pack non-negative integers below ``2**bits`` into ``ceil(count * bits / 8)`` bytes,
    least significant bit first: code ``i`` holds bits ``i * bits`` to ``(i + 1) * bits - 1``.

    Codes of 1, 2, 4 or 8 bits are shifted into place, ``8 / bits`` to a byte. Eight
    codes of 3, 5, 6 or 7 bits fill exactly ``bits`` bytes: each group of eight is
    shifted into one little-endian uint64 and its ``bits`` low bytes kept. Either way it
    is a few vector operations, whatever the count. Wider codes are split into bits
    (numpy ``unpackbits``), their ``bits`` low bits kept, and all of them packed again.
    """
    if 8 % bits == 0:
        per_byte = 8 // bits
        flat = values.reshape(-1).to(torch.uint8)
        grouped = torch.nn.functional.pad(flat, (0, -len(flat) % per_byte)).view(-1, per_byte)
        packed = grouped[:, 0].clone()
        for position in range(1, per_byte):
            packed |= grouped[:, position] << position * bits
        return packed.numpy().tobytes()
    codes = values.reshape(-1).numpy()
    if bits < 8:
        _code_width(bits)
        groups = np.zeros((-(-len(codes) // 8), 8), dtype=np.uint64)
        groups.reshape(-1)[: len(codes)] = codes
        words = groups[:, 0].copy()
        for position in range(1, 8):
            words |= groups[:, position] << np.uint64(position * bits)
        packed = words.view(np.uint8).reshape(-1, 8)[:, :bits]
        return packed.tobytes()[: packed_size(len(codes), bits)]
    width = _code_width(bits)
    planes = np.unpackbits(
        codes.astype(f"<u{width}").view(np.uint8).reshape(-1, width), axis=1, bitorder="little"
    )
    return np.packbits(planes[:, :bits], bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> torch.Tensor:
    """Return the ``count`` integers of ``bits`` bits each that :func:`pack_bits` packed."""
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes hold no {count} codes of {bits} bits ({expected})")
    raw = np.frombuffer(data, dtype=np.uint8)
    if 8 % bits == 0:
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        codes = ((raw[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
        return torch.from_numpy(codes.astype(np.int64))
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
    each index in ``ceil(log2 dim)`` bits (tag 0), or the set as a bitmap of ``dim`` bits
    compressed with bz2 (tag 1), whichever is shorter.

    A sparse bitmap's long runs of zeros compress to about 8-10 bits per index at a
    few percent density, where absolute indices cost 18-21 bits; bz2 (standard library)
    does it in about a millisecond for the 2NN.
    """
    mask = np.zeros(dim, dtype=np.uint8)
    mask[indices.numpy()] = 1
    bitmap = bz2.compress(np.packbits(mask).tobytes(), 9)
    if len(bitmap) < packed_size(len(indices), index_bits(dim)):
        return b"\x01" + bitmap
    return b"\x00" + pack_bits(indices, index_bits(dim))


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
    size = (dim + 7) // 8
    try:  # bounded, so a small message cannot inflate into a large buffer
        raw = bz2.BZ2Decompressor().decompress(data[1:], max_length=size + 1)
    except (OSError, EOFError) as error:
        raise ValueError(f"the index bitmap does not decompress: {error}") from None
    if len(raw) != size:
        raise ValueError(f"the index bitmap has {len(raw)} bytes, not {size}")
    mask = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=dim)
    found = np.flatnonzero(mask)
    if len(found) != count:
        raise ValueError(f"the index bitmap holds {len(found)} coordinates, not {count}")
    return torch.from_numpy(found.astype(np.int64))


# --- QSGD -------------------------------------------------------------------------------


def qsgd_levels(bits: int) -> int:
    """The number of levels ``s`` that ``bits`` bits per coordinate hold with a sign:
    codes ``-s .. s`` are ``2 s + 1 <= 2**bits`` values."""
    return 2 ** (bits - 1) - 1


Randomness = torch.Generator | torch.Tensor
"""What a stochastic quantizer draws from: a generator, or the uniform draws in ``[0, 1)``
themselves, one per coordinate (see :func:`row_uniforms`)."""


def row_uniforms(
    shape: Sequence[int], generators: Sequence[torch.Generator], dtype: torch.dtype
) -> torch.Tensor:
    """Uniform draws in ``[0, 1)`` of shape ``[n, dim]``, row ``k`` from ``generators[k]``:
    the numbers that ``torch.rand((1, dim), generator=generators[k], dtype=dtype)``
    gives, so clients quantized together get what each would get alone."""
    draws = torch.empty(tuple(shape), dtype=dtype)
    for row, generator in zip(draws, generators, strict=True):
        row.uniform_(generator=generator)
    return draws


def qsgd_quantize(
    x: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """QSGD (Alistarh et al. 2017, Section 3.1) of each row of ``x`` (``[n, dim]``).

    Returns the rows' L2 norms ``[n]`` and int32 codes ``[n, dim]`` in ``-s .. s``
    (``s = levels``); :func:`dequantize` turns them back into an unbiased
    estimate of ``x``.
    """
    return stochastic_quantize(x, torch.linalg.vector_norm(x, dim=1), levels, randomness)


def max_quantize(
    x: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic ``2 s + 1``-level quantization of each row over ``[-max|x|, max|x|]``:
    Suresh et al. 2017's stochastic k-level quantization (their range is ``[min, max]``;
    a range symmetric about zero keeps QSGD's codes). After a random rotation the
    largest coordinate is about ``||x|| sqrt(log(dim) / dim)``, so the error is about
    ``log(dim) / s^2 * ||x||^2``, where QSGD's norm scale gives ``sqrt(dim) / s``.
    """
    return stochastic_quantize(x, x.abs().amax(dim=1), levels, randomness)


def stochastic_quantize(
    x: torch.Tensor, scales: torch.Tensor, levels: int, randomness: Randomness
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``round_random(s * x / scale)`` of each row with its ``scale >= max|x|``:
    each value goes to one of its two nearest levels, the upper one with probability
    equal to its distance from the lower, so the estimate ``scale * code / s`` is
    unbiased. Returns ``scales`` (as given) and the codes."""
    if isinstance(randomness, torch.Generator):
        randomness = torch.rand(x.shape, generator=randomness, dtype=x.dtype)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    scaled = x.abs().div_(safe[:, None]).mul_(levels).clamp_(max=levels)
    lower = scaled.floor()
    up = randomness < scaled.sub_(lower)  # scaled now holds the distance to the lower level
    # copysign, not a product with sign(x): where x is 0 the magnitude is 0 either way
    codes = lower.add_(up).copysign_(x)
    return scales, codes.to(torch.int32)


def dequantize(scales: torch.Tensor, codes: torch.Tensor, levels: int) -> torch.Tensor:
    """The estimate ``scale * code / s`` of each row of :func:`stochastic_quantize`."""
    return scales[:, None] * (codes.to(scales.dtype) / levels)


def qsgd_variance_bound(dim: int, levels: int) -> float:
    """Alistarh et al. 2017, Lemma 3.1: ``E||Q(v) - v||^2 <= this * ||v||^2``."""
    return min(dim / levels**2, math.sqrt(dim) / levels)


def nearest_quantize(x: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round each row of ``x`` to the nearest of ``2 s + 1`` levels over ``[-max|x|,
    max|x|]``: biased, for use with error feedback, which carries the rounding to the
    next round (Karimireddy et al. 2019). Returns the scales ``[n]`` and the codes;
    :func:`dequantize` inverts."""
    scales = x.abs().amax(dim=1)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    return scales, torch.round(x / safe[:, None] * levels).to(torch.int64)


# --- Randomized Hadamard rotation -------------------------------------------------------


def hadamard_blocks(dim: int) -> list[int]:
    """Sizes of the Hadamard blocks that rotate a vector of ``dim`` coordinates.

    The vector is padded to a multiple of :data:`MIN_BLOCK`, and that length is cut
    into the powers of two of its binary expansion (largest first). Padding to one
    power of two, as in Suresh et al., can nearly double what a client sends (the
    2NN's 199,210 parameters would be 262,144 codes); blocks cost at most 63 padded
    coordinates and rotate the bulk of the vector in its largest block.
    """
    padded = -(-dim // MIN_BLOCK) * MIN_BLOCK
    return [1 << b for b in reversed(range(padded.bit_length())) if padded >> b & 1]


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of each row of ``x`` (``[n, 2**k]``).

    ``H_m`` is the Kronecker product of small Hadamard matrices (``H_64 (x) H_64 (x)
    ...``), so the transform is one small matrix product per factor along its axis of
    the row reshaped into a grid: ``O(n m log m)`` work done by BLAS. torch has no
    Hadamard transform on CPU, hence this one. The transform is its own inverse.

    Rows are transformed one at a time: a matrix product's rounding can depend on how
    many rows it multiplies, and a client's rotated update must not depend on the
    clients stacked beside it.
    """
    n, m = x.shape
    if m & (m - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, not {m}")
    factors = []
    rest = m
    while rest > 1:
        factors.append(min(rest, _HADAMARD_FACTOR))
        rest //= factors[-1]
    matrices = [_hadamard_matrix(size, x.dtype) for size in factors]
    rows = []
    for y in x.split(1):
        after = m
        for size, matrix in zip(factors, matrices, strict=True):
            after //= size
            if after == 1:  # the last factor: one product on the last axis (H is
                # symmetric; multiplying by H.T is torch.matmul's own arithmetic for
                # H y, without its many matrix-vector products)
                y = y.reshape(-1, size) @ matrix.mT
            else:  # the row as [before, size, after]: H_size acts on the middle axis
                y = torch.matmul(matrix, y.reshape(-1, size, after))
        rows.append(y.reshape(1, m))
    return (rows[0] if n == 1 else torch.cat(rows)) / math.sqrt(m)


_HADAMARD_FACTOR = 64


def _hadamard_matrix(size: int, dtype: torch.dtype) -> torch.Tensor:
    """Sylvester's unnormalised ``size x size`` Hadamard matrix of +-1."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(dim: int, generator: torch.Generator) -> torch.Tensor:
    """The diagonal of Suresh et al.'s random sign matrix ``D`` for the padded length of
    ``dim`` coordinates (see :func:`hadamard_blocks`), as float32 ``+-1``."""
    padded = sum(hadamard_blocks(dim))
    return torch.randint(0, 2, (padded,), generator=generator).mul_(2).sub_(1).float()


def rotate(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``H D x`` for each row of ``x`` (``[n, dim]``): pad, flip signs, transform blocks."""
    blocks = hadamard_blocks(x.shape[1])
    padded = torch.nn.functional.pad(x, (0, sum(blocks) - x.shape[1])) * signs
    return torch.cat([walsh_hadamard(part) for part in padded.split(blocks, dim=1)], dim=1)


def unrotate(y: torch.Tensor, signs: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of :func:`rotate`: ``D H y``, cut back to ``dim`` coordinates."""
    blocks = hadamard_blocks(dim)
    back = torch.cat([walsh_hadamard(part) for part in y.split(blocks, dim=1)], dim=1) * signs
    return back[:, :dim]


# --- Sparsification ---------------------------------------------------------------------


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest-magnitude coordinates of each row of ``x``: sorted indices
    ``[n, k]`` and their values.

    Each row's ``k``-th largest magnitude comes from numpy's ``partition`` (linear-time
    selection, several times faster than ``torch.topk`` on CPU), and the coordinates at
    or above it are the ``k`` largest when it is not tied. Where it is (or a row holds
    NaN), ``torch.topk`` chooses among the tied coordinates.
    """
    magnitudes = x.abs()
    dim, array = x.shape[1], magnitudes.numpy()
    chosen = array >= np.partition(array, dim - k, axis=1)[:, dim - k, None]
    if bool((np.count_nonzero(chosen, axis=1) == k).all()):
        indices = torch.from_numpy(np.nonzero(chosen)[1].reshape(-1, k))
    else:
        indices = magnitudes.topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return indices, x.gather(1, indices)


def densify(indices: torch.Tensor, values: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows of ``dim`` zeros holding ``values`` at ``indices`` (both ``[n, k]``)."""
    return values.new_zeros(values.shape[0], dim).scatter_(1, indices, values)


def error_feedback(corrected: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """The new residual ``corrected - sent`` (Karimireddy et al. 2019, Algorithm 2), where
    ``corrected = update + old residual`` and ``sent`` is what the server will decode.

    For top-k, and for values rounded to float16, the subtraction is exact in float32
    (the two are equal, zero, or within a factor of two: Sterbenz's lemma), so
    ``sent + residual == update + old residual`` holds to the bit.
    """
    return corrected - sent


def random_subset(dim: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A seeded, sorted subset of ``k`` of ``dim`` coordinates (Konečný et al. 2016's mask)."""
    chosen = torch.zeros(dim, dtype=torch.bool)
    chosen[torch.randperm(dim, generator=generator)[:k]] = True
    return chosen.nonzero().view(-1)  # increasing, as a sort would give, in one pass
