"""Exact 2-D convolution over Z_2^64 by im2col and a ring matrix product.

``torch.nn.functional.unfold`` only accepts floating-point tensors, which cannot hold 64-bit
ring elements exactly. :func:`im2col` builds the same patch matrix on int64 with
``Tensor.unfold`` (a strided view, no arithmetic), so the convolution reduces to one exact
ring matmul (Chellapilla, Puri & Simard, "High performance convolutional neural networks
for document processing", 2006). Only dilation 1 and groups 1 are supported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from privfl.smpc.ring_matmul import RingMatmul, int64_matmul


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution along one dimension."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """Patch matrix of ``x`` with shape (..., C, H, W) as (..., OH * OW, C * KH * KW).

    Works on any dtype (int64 included); the column order matches a weight tensor of shape
    (OUT, C, KH, KW) reshaped to (OUT, C * KH * KW).
    """
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    patches = x.unfold(-2, kernel[0], stride[0]).unfold(-2, kernel[1], stride[1])
    # patches: (..., C, OH, OW, KH, KW) -> (..., OH, OW, C, KH, KW)
    lead = patches.dim() - 5
    order = [*range(lead), lead + 1, lead + 2, lead, lead + 3, lead + 4]
    patches = patches.permute(order)
    oh, ow = patches.shape[lead], patches.shape[lead + 1]
    return patches.reshape(*patches.shape[:lead], oh * ow, -1)


def ring_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    matmul: RingMatmul = int64_matmul,
) -> torch.Tensor:
    """Exact convolution of int64 ``x`` (..., C, H, W) with ``weight`` (OUT, C, KH, KW).

    ``weight`` may carry the same leading batch dimensions as ``x`` (used for the two
    parties' shares). Returns (..., OUT, OH, OW), equal modulo 2^64 to the integer
    convolution.
    """
    out_channels, _, kh, kw = weight.shape[-4:]
    oh = conv_output_size(x.shape[-2], kh, stride[0], padding[0])
    ow = conv_output_size(x.shape[-1], kw, stride[1], padding[1])
    cols = im2col(x, (kh, kw), stride, padding)  # (..., OH*OW, C*KH*KW)
    w_mat = weight.reshape(*weight.shape[:-4], 1, out_channels, -1).transpose(-1, -2)
    out = matmul(cols, w_mat)  # (..., OH*OW, OUT)
    return out.transpose(-1, -2).reshape(*out.shape[:-2], out_channels, oh, ow)
