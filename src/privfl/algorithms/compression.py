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
- **Bit packing** of ``b``-bit integers into bytes (numpy's ``packbits``), so a
  ``b``-bit code costs ``b`` bits on the wire, not a float; sets of coordinates as
  packed indices or a bz2-compressed bitmap, whichever is shorter.

Nothing here keeps state or knows about rounds; :mod:`privfl.builtin.compressors`
adapts these functions to the client and server halves.
"""

from __future__ import annotations

import bz2
import math

import numpy as np
import torch

MIN_BLOCK = 64
"""The smallest Hadamard block: vectors are padded to a multiple of it (see
:func:`hadamard_blocks`)."""

# --- Bit packing ------------------------------------------------------------------------


def pack_bits(values: torch.Tensor, bits: int) -> bytes:
    """Pack non-negative integers below ``2**bits`` into ``ceil(count * bits / 8)`` bytes.

    Each code's little-endian bytes are split into bits (numpy ``unpackbits``), its
    ``bits`` low bits kept, and all of them packed again, least significant first.
    """
    if 8 % bits == 0:  # whole codes per byte: shift them into place
        per_byte = 8 // bits
        codes = values.reshape(-1).numpy().astype(np.uint8)
        codes = np.pad(codes, (0, -len(codes) % per_byte)).reshape(-1, per_byte)
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        return np.bitwise_or.reduce(codes << shifts, axis=1).astype(np.uint8).tobytes()
    width = _code_width(bits)
    codes = values.reshape(-1).numpy().astype(f"<u{width}")
    planes = np.unpackbits(codes.view(np.uint8).reshape(-1, width), axis=1, bitorder="little")
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
    absolute = pack_bits(indices, index_bits(dim))
    mask = np.zeros(dim, dtype=np.uint8)
    mask[indices.numpy()] = 1
    bitmap = bz2.compress(np.packbits(mask).tobytes(), 9)
    return b"\x01" + bitmap if len(bitmap) < len(absolute) else b"\x00" + absolute


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


def qsgd_quantize(
    x: torch.Tensor, levels: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """QSGD (Alistarh et al. 2017, Section 3.1) of each row of ``x`` (``[n, dim]``).

    Returns the rows' L2 norms ``[n]`` and integer codes ``[n, dim]`` in ``-s .. s``
    (``s = levels``); :func:`dequantize` turns them back into an unbiased
    estimate of ``x``.
    """
    return stochastic_quantize(x, torch.linalg.vector_norm(x, dim=1), levels, generator)


def max_quantize(
    x: torch.Tensor, levels: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic ``2 s + 1``-level quantization of each row over ``[-max|x|, max|x|]``:
    Suresh et al. 2017's stochastic k-level quantization (their range is ``[min, max]``;
    a range symmetric about zero keeps QSGD's codes). After a random rotation the
    largest coordinate is about ``||x|| sqrt(log(dim) / dim)``, so the error is about
    ``log(dim) / s^2 * ||x||^2``, where QSGD's norm scale gives ``sqrt(dim) / s``.
    """
    return stochastic_quantize(x, x.abs().amax(dim=1), levels, generator)


def stochastic_quantize(
    x: torch.Tensor, scales: torch.Tensor, levels: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``round_random(s * x / scale)`` of each row with its ``scale >= max|x|``:
    each value goes to one of its two nearest levels, the upper one with probability
    equal to its distance from the lower, so the estimate ``scale * code / s`` is
    unbiased. Returns ``scales`` (as given) and the codes."""
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    scaled = (x.abs() / safe[:, None] * levels).clamp_(max=levels)
    lower = scaled.floor()
    up = torch.rand(x.shape, generator=generator, dtype=x.dtype) < (scaled - lower)
    codes = (lower + up.to(x.dtype)) * torch.sign(x)
    return scales, codes.to(torch.int64)


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
    """
    n, m = x.shape
    if m & (m - 1):
        raise ValueError(f"the Hadamard transform needs a power-of-two length, not {m}")
    factors = []
    rest = m
    while rest > 1:
        factors.append(min(rest, _HADAMARD_FACTOR))
        rest //= factors[-1]
    y = x
    after = m
    for size in factors:
        after //= size
        # Rows as [n * before, size, after]: H_size acts on the middle axis.
        y = torch.matmul(_hadamard_matrix(size, x.dtype), y.reshape(-1, size, after))
    return y.reshape(n, m) / math.sqrt(m)


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
    ``[n, k]`` and their values."""
    indices = x.abs().topk(k, dim=1, sorted=False).indices.sort(dim=1).values
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
    return torch.randperm(dim, generator=generator)[:k].sort().values
