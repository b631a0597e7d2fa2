"""Encrypted evaluation with two-party additive secret sharing (SMPC) on PyTorch tensors.

A model owner and a data owner evaluate a model on a test set so that the data owner never
sees the weights and the model owner never sees the images: both secret-share their
inputs between two compute parties (party 0 and party 1), which run the forward pass on
shares with correlated randomness from a trusted dealer ("crypto provider"), and only the
predictions (or only the number of correct ones) are opened. This is the setting of
PySyft 0.2, SecureNN and CrypTen; none of them is maintained for current PyTorch, so the
engine is written here from the papers cited in each module.

Threat model: semi-honest (honest-but-curious) compute parties that do not collude with
each other or with the dealer. Values live in Z_2^64 (``torch.int64``) in fixed point.

Modules: :mod:`.ring` (ring and fixed point, truncation), :mod:`.prg` (ChaCha20 PRG),
:mod:`.ring_matmul` and :mod:`.ring_conv` (exact ring matmul and convolution),
:mod:`.shared` (sharings), :mod:`.beaver` (pure gate formulas), :mod:`.dealer`,
:mod:`.traffic` (bytes and the opening log), :mod:`.session`, :mod:`.protocols` (secure
operations), :mod:`.inference` (sequential models), :mod:`.shapes` and :mod:`.headroom`
(the checks before anything is shared: input shapes, and fixed-point headroom against a
public input bound), and :mod:`.distributed` with :mod:`.parties`, :mod:`.channel` and
:mod:`.dealer_streams` (the three parties as processes).
"""

from privfl.smpc.beaver import BilinearOp
from privfl.smpc.dealer import Dealer, Request
from privfl.smpc.inference import (
    SharedModel,
    secure_count_correct,
    secure_forward,
    secure_outputs,
    secure_predict,
    share_labels,
    share_model,
)
from privfl.smpc.prg import ChaChaPRG
from privfl.smpc.protocols import (
    add_public,
    argmax_one_hot,
    beaver_apply,
    conv2d,
    matmul,
    max_pool2d,
    maximum,
    msb,
    mul,
    mul_public,
    relu,
    truncate,
)
from privfl.smpc.ring import DEFAULT_FRAC_BITS, FixedPoint, truncate_shares
from privfl.smpc.ring_matmul import int64_matmul, limb_matmul, max_exact_inner_dim
from privfl.smpc.session import PhaseTimes, Session
from privfl.smpc.shared import BinarySharedTensor, SharedTensor, reconstruct, share
from privfl.smpc.traffic import Opening, OpeningKind, OpeningLog, Traffic

__all__ = [
    "DEFAULT_FRAC_BITS",
    "BilinearOp",
    "BinarySharedTensor",
    "ChaChaPRG",
    "Dealer",
    "FixedPoint",
    "Opening",
    "OpeningKind",
    "OpeningLog",
    "PhaseTimes",
    "Request",
    "Session",
    "SharedModel",
    "SharedTensor",
    "Traffic",
    "add_public",
    "argmax_one_hot",
    "beaver_apply",
    "conv2d",
    "int64_matmul",
    "limb_matmul",
    "matmul",
    "max_exact_inner_dim",
    "max_pool2d",
    "maximum",
    "msb",
    "mul",
    "mul_public",
    "reconstruct",
    "relu",
    "secure_count_correct",
    "secure_forward",
    "secure_outputs",
    "secure_predict",
    "share",
    "share_labels",
    "share_model",
    "truncate",
    "truncate_shares",
]
