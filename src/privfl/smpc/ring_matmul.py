"""Exact matrix products over Z_2^64: int64 matmul and the float64 limb method.

``torch.matmul`` on int64 CPU tensors is exact modulo 2^64 (it wraps). The limb method
reaches the same bits through floating-point BLAS: each 64-bit operand is split into
unsigned limbs of ``limb_bits`` bits, a = sum_i a_i 2^(limb_bits * i). A float64 product
of limb matrices is exact when every partial sum stays below 2^53, that is when the inner
dimension K satisfies K * (2^limb_bits - 1)^2 < 2^53; longer inner dimensions are cut into
chunks of that size. The limb products are shifted and summed with int64 wrap-around, and
only the pairs with limb_bits * (i + j) < 64 contribute modulo 2^64.

This is the floating-point trick of "CryptGPU" (Tan, Knott, Tian & Wu, IEEE S&P 2021,
section IV) used here on the CPU. With 22-bit limbs (limbs of 22, 22 and 20 bits) six limb
products are needed and K may reach 512 per chunk; with 16-bit limbs ten products and
K up to 2^21. Which method is faster depends on the BLAS and the machine:
``bench/smpc/bench_smpc.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from privfl.errors import ConfigError

DEFAULT_LIMB_BITS = 22
_EXACT_FLOAT_BITS = 53


def max_exact_inner_dim(limb_bits: int) -> int:
    """Largest inner dimension K for which a float64 product of limb matrices is exact."""
    limb_max = (1 << limb_bits) - 1
    return ((1 << _EXACT_FLOAT_BITS) - 1) // (limb_max * limb_max)


def split_limbs(x: torch.Tensor, limb_bits: int) -> torch.Tensor:
    """Unsigned ``limb_bits``-bit limbs of int64 ``x`` as float64, stacked on a new dim 0."""
    n_limbs = -(-64 // limb_bits)
    mask = (1 << limb_bits) - 1
    shifts = torch.arange(0, n_limbs * limb_bits, limb_bits, device=x.device)
    shifts = shifts.view(-1, *([1] * x.dim()))
    return ((x.unsqueeze(0) >> shifts) & mask).to(torch.float64)


def _limb_matmul_chunk(a: torch.Tensor, b: torch.Tensor, limb_bits: int) -> torch.Tensor:
    """Limb product for an inner dimension small enough to be exact in float64."""
    a_limbs = split_limbs(a, limb_bits)
    b_limbs = split_limbs(b, limb_bits)
    n_limbs = a_limbs.shape[0]
    out: torch.Tensor | None = None
    for j in range(n_limbs):
        n_i = sum(1 for i in range(n_limbs) if limb_bits * (i + j) < 64)
        if n_i == 0:
            break
        # One GEMM per limb j of b: the needed limbs i of a are stacked into the rows.
        if b_limbs.dim() == 3:
            rows = a_limbs[:n_i].reshape(-1, a.shape[-1])
            prods = (rows @ b_limbs[j]).reshape(n_i, *a.shape[:-1], b.shape[-1])
        else:
            prods = a_limbs[:n_i] @ b_limbs[j].unsqueeze(0)
        prods = prods.to(torch.int64)
        for i in range(n_i):
            term = prods[i] << (limb_bits * (i + j))
            out = term if out is None else out + term
    assert out is not None
    return out


def limb_matmul(
    a: torch.Tensor, b: torch.Tensor, limb_bits: int = DEFAULT_LIMB_BITS
) -> torch.Tensor:
    """Exact ``a @ b`` modulo 2^64 for int64 tensors, computed with float64 GEMMs.

    ``a`` has shape (..., M, K) and ``b`` (..., K, N) with broadcastable batch dimensions;
    the result is bit-identical to ``torch.matmul`` on int64. The inner dimension is cut
    into chunks of at most :func:`max_exact_inner_dim` ``(limb_bits)``.
    """
    if not 8 <= limb_bits <= 26:
        raise ConfigError("limb_bits", limb_bits, "an integer from 8 to 26")
    if a.dtype != torch.int64 or b.dtype != torch.int64:
        raise TypeError("limb_matmul multiplies int64 ring elements")
    inner = a.shape[-1]
    chunk = max_exact_inner_dim(limb_bits)
    if inner <= chunk:
        return _limb_matmul_chunk(a, b, limb_bits)
    out = _limb_matmul_chunk(a[..., :chunk], b[..., :chunk, :], limb_bits)
    for start in range(chunk, inner, chunk):
        stop = start + chunk
        out = out + _limb_matmul_chunk(a[..., start:stop], b[..., start:stop, :], limb_bits)
    return out


def int64_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` modulo 2^64 with torch's native int64 matmul."""
    return torch.matmul(a, b)


RingMatmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MATMUL_METHODS: dict[str, RingMatmul] = {"int64": int64_matmul, "limb": limb_matmul}


def get_ring_matmul(method: str) -> RingMatmul:
    """The ring matmul named ``method`` ("int64" or "limb")."""
    if method not in MATMUL_METHODS:
        raise ConfigError("matmul_method", method, f"one of {sorted(MATMUL_METHODS)}")
    return MATMUL_METHODS[method]
