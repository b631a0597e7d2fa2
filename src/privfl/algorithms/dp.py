"""The math of client-level DP-FedAvg as pure functions: clipping, noise, adaptive clipping.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially Private
Recurrent Language Models", ICLR) bounds each client's influence by clipping its
update to L2 norm ``C`` and adds Gaussian noise of standard deviation ``z * C`` to the
sum of clipped updates; ``z`` is the noise multiplier that the accountants of
:mod:`privfl.builtin.accountants` turn into epsilon.

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private
Learning with Adaptive Clipping", NeurIPS) lets ``C`` follow a quantile of the update
norms, spending part of the noise budget on a noisy count of unclipped updates.

For distributed DP each client adds a share of the noise, so that the sum of the
shares carries the planned noise (as with secure aggregation, where the server sees
only the sum).

Nothing here keeps state; :class:`privfl.builtin.dp_mechanism.DPFedAvg` does.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from privfl.errors import ConfigError

# --- Clipping ---------------------------------------------------------------------------


def clip_to_norm(update: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip to L2 norm ``clip`` along the last dimension (McMahan et al. 2018, Algorithm 1).

    A flat ``[dim]`` update is one vector; a stacked ``[n, dim]`` tensor is ``n``
    updates, clipped row by row. A vector ``u`` with ``|u| > clip`` becomes
    ``u * clip / |u|``; vectors with ``|u| <= clip`` are returned bit for bit. The
    norm is computed in the update's dtype, so a clipped vector's norm can exceed
    ``clip`` by a rounding error (a few units in the last place).

    :returns: ``(clipped, norms)``: the clipped tensor (same shape and dtype) and the
        norms before clipping, a tensor of shape ``update.shape[:-1]`` (0-d for a flat
        update).
    :raises ConfigError: when ``clip`` is not a finite number > 0.
    :raises ValueError: when a norm is not finite (NaN or infinite values): such an
        update cannot be brought to norm ``clip``.
    """
    if not (_is_number(clip) and math.isfinite(clip) and clip > 0):
        raise ConfigError("clip", clip, "a finite number > 0")
    norms = torch.linalg.vector_norm(update, dim=-1)
    if not bool(torch.isfinite(norms).all()):
        # float32 squares of huge but finite values overflow; float64 ones cannot.
        norms = torch.linalg.vector_norm(update, dim=-1, dtype=torch.float64)
        if not bool(torch.isfinite(norms).all()):
            raise ValueError("cannot clip an update with NaN or infinite values")
    # Rows within the norm are multiplied by exactly 1, which IEEE 754 leaves bit for bit
    # unchanged; one multiplication is twice as fast as torch.where over both branches.
    scale = torch.where(norms > clip, clip / norms, 1.0).to(update.dtype)
    return update * scale.unsqueeze(-1), norms


# --- Gaussian noise ---------------------------------------------------------------------


def gaussian_noise(
    shape: int | Sequence[int],
    std: float,
    *,
    generator: torch.Generator | None = None,
    secure: bool = False,
) -> torch.Tensor:
    """Return float32 Gaussian noise of standard deviation ``std`` on the CPU.

    With ``secure=False`` the noise comes from torch's generator (``generator``, or
    torch's global one when None): reproducible from a seed, and predictable by anyone
    who knows the seed, so fine for experiments only.

    With ``secure=True`` ``generator`` is ignored and the noise is drawn from a
    cryptographically secure source: the ChaCha20 keystream (``cryptography``, which
    uses OpenSSL) under a fresh key from ``os.urandom(32)`` gives uniform 53-bit
    doubles, which the Box–Muller transform (Box and Muller 1958, "A Note on the
    Generation of Random Normal Deviates") turns into standard normals in float64
    before scaling and rounding to float32. Secure noise is not reproducible: every
    call draws a new key.

    Known limitation: floating-point noise leaks through the low-order bits of its
    samples (Mironov 2012, "On Significance of the Least Significant Bits for
    Differential Privacy", CCS); neither mode defends against that (a discrete or
    snapping mechanism would).

    :raises ValueError: when ``std`` is negative or not finite.
    """
    if not (_is_number(std) and math.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be a finite number >= 0, got {std!r}")
    size = torch.Size([shape] if isinstance(shape, int) else shape)
    if not secure:
        return torch.randn(size, generator=generator, dtype=torch.float32) * std
    count = size.numel()
    pairs = (count + 1) // 2
    stream = (
        Cipher(algorithms.ChaCha20(os.urandom(32), bytes(16)), mode=None)
        .encryptor()
        .update(bytes(16 * pairs))
    )
    words = np.frombuffer(stream, dtype=np.uint64).reshape(2, pairs) >> np.uint64(11)
    u1 = (words[0] + 1.0) * 2.0**-53  # in (0, 1], so the log is finite
    u2 = words[1] * 2.0**-53  # in [0, 1)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * math.pi * u2
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]
    return torch.from_numpy(normals * std).to(torch.float32).reshape(size)


# --- Distributed noise ------------------------------------------------------------------


def distributed_noise_std(total_std: float, num_clients: float) -> float:
    """Return each client's noise std so that the sum of ``num_clients`` shares has ``total_std``.

    Independent Gaussians add their variances: ``n`` shares of variance
    ``total_std^2 / n`` sum to ``total_std^2``, so each share has std
    ``total_std / sqrt(n)``.
    """
    if not (_is_number(num_clients) and num_clients > 0):
        raise ValueError(f"num_clients must be a number > 0, got {num_clients!r}")
    return total_std / math.sqrt(num_clients)


def realized_noise_multiplier(
    noise_multiplier: float, planned_clients: float, contributed_clients: float
) -> float:
    """Return the noise multiplier a round's sum really carries under distributed noise.

    Each client adds a share of variance ``(z * C)^2 / planned_clients``; when only
    ``contributed_clients`` shares reach the sum (dropouts, or a Poisson cohort smaller
    than expected), its variance is ``(z * C)^2 * contributed / planned``, i.e. noise
    multiplier ``z * sqrt(contributed / planned)``. More shares than planned are
    accounted as ``z`` (capped), which is safe: extra noise only helps privacy.
    """
    if not (_is_number(planned_clients) and planned_clients > 0):
        raise ValueError(f"planned_clients must be a number > 0, got {planned_clients!r}")
    if not (_is_number(contributed_clients) and contributed_clients >= 0):
        raise ValueError(f"contributed_clients must be a number >= 0, got {contributed_clients!r}")
    return noise_multiplier * math.sqrt(min(1.0, contributed_clients / planned_clients))


# --- Adaptive clipping (Andrew et al. 2021) ---------------------------------------------

NOISE_TO_SIGNAL_LIMIT = 10.0
"""Above this ratio of noise norm to the largest signal norm, DP-FedAvg is warned
about: on MNIST's 2NN (199,210 parameters, z = 1) a ratio of 4.5 (100 expected
clients) reached 87% accuracy (``bench/dp_tradeoff.py``), while 44.6 (10 expected
clients) diverged."""


def noise_to_signal(
    noise_multiplier: float, dimension: int, expected_clients: float, *, local: bool = False
) -> float:
    """Ratio of the noise's L2 norm in the averaged update to the largest norm of the
    averaged clipped updates (the clip norm C).

    The average of ``E`` clipped updates has norm at most ``C``; central or distributed
    noise of std ``z * C`` on the sum adds ``z * C / E`` per coordinate to the average,
    so a norm of about ``z * C * sqrt(d) / E``: the ratio is ``z * sqrt(d) / E``. With
    local noise every client adds ``z * C``, and the ratio is ``z * sqrt(d / E)``
    (McMahan et al. 2018 train with thousands of clients per round for this reason).
    """
    spread = math.sqrt(expected_clients) if local else expected_clients
    return noise_multiplier * math.sqrt(dimension) / spread


ADAPTIVE_LEARNING_RATE = 0.2
"""``eta`` of the geometric clip update: Andrew et al. 2021 recommend 0.2 (also the
default of TensorFlow Federated's ``DifferentiallyPrivateFactory.gaussian_adaptive``)."""

COUNT_STDDEV_PER_CLIENT = 1 / 20
"""``sigma_b = expected_clients / 20``: the clipped-count noise Andrew et al. 2021
recommend for fast adaptation at a small share of the privacy budget."""


def default_count_stddev(expected_clients: float) -> float:
    """Return Andrew et al.'s default clipped-count noise ``sigma_b = expected_clients / 20``."""
    if not (_is_number(expected_clients) and expected_clients > 0):
        raise ValueError(f"expected_clients must be a number > 0, got {expected_clients!r}")
    return expected_clients * COUNT_STDDEV_PER_CLIENT


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Return the noise multiplier ``z_Delta`` for the update sum under adaptive clipping.

    Andrew et al. 2021, Section 3 (combining quantile estimation with DP-FedAvg): a
    round that adds noise of multiplier ``z_Delta`` to the sum of clipped updates and
    noise of standard deviation ``sigma_b`` to the count of unclipped updates (each
    client's bit centred to ``+-1/2`` by :func:`centred_unclipped`, sensitivity
    ``1/2``) is as private as one Gaussian mechanism with noise multiplier
    ``z = (z_Delta^-2 + (2 sigma_b)^-2)^(-1/2)``. TensorFlow Federated's
    ``adaptive_clip_noise_params`` computes the same. For a total budget ``z``
    the updates therefore get ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, which is
    larger than ``z``; the accountant composes ``z``.

    :raises ConfigError: when ``noise_multiplier`` is not a finite number > 0, or
        ``count_stddev`` is not above ``noise_multiplier / 2`` (then the count alone
        would spend the whole budget).
    """
    if not (
        _is_number(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier > 0
    ):
        raise ConfigError("noise_multiplier", noise_multiplier, "a finite number > 0")
    if not (_is_number(count_stddev) and 2 * count_stddev > noise_multiplier):
        raise ConfigError(
            "count_stddev",
            count_stddev,
            f"a number > noise_multiplier / 2 = {noise_multiplier / 2:g}: the clipped "
            f"count's noise must leave part of the budget z = {noise_multiplier:g} for "
            "the updates (raise count_stddev, or expect more clients per round)",
        )
    return (noise_multiplier**-2 - (2 * count_stddev) ** -2) ** -0.5


def centred_unclipped(norms: torch.Tensor, clip: float) -> torch.Tensor:
    """Return each client's centred bit for the clipped count: ``+1/2`` if unclipped, else ``-1/2``.

    Andrew et al. 2021 count the updates with norm <= ``C``; shifting each client's
    0/1 bit by ``-1/2`` halves the count's sensitivity to ``1/2`` under adding or
    removing a client, which :func:`update_noise_multiplier` relies on (TensorFlow
    Privacy's ``QuantileEstimatorQuery`` does the same). Sum these bits, add noise of
    std ``sigma_b`` and pass the result to :func:`unclipped_fraction`.
    """
    return (norms <= clip).to(torch.float64) - 0.5


def unclipped_fraction(noisy_centred_sum: float, expected_clients: float) -> float:
    """Return the noisy fraction of unclipped updates from the noisy sum of centred bits.

    ``b = sum / expected_clients + 1/2`` (dividing by the expected, not the actual,
    number of clients keeps the count's sensitivity fixed), clamped to ``[0, 1]`` as in
    TensorFlow Privacy, so one round moves the clip norm by at most ``exp(eta)``.
    """
    if not (_is_number(expected_clients) and expected_clients > 0):
        raise ValueError(f"expected_clients must be a number > 0, got {expected_clients!r}")
    return min(1.0, max(0.0, noisy_centred_sum / expected_clients + 0.5))


def update_clip_norm(
    clip: float,
    noisy_fraction_below: float,
    target_quantile: float,
    learning_rate: float = ADAPTIVE_LEARNING_RATE,
) -> float:
    """Geometric clip-norm update (Andrew et al. 2021, private quantile estimation).

    ``C <- C * exp(-eta * (b - gamma))`` with ``b`` the noisy fraction of the round's
    updates with norm <= ``C`` (see :func:`unclipped_fraction`), ``gamma =
    target_quantile`` and ``eta = learning_rate``. ``C`` shrinks while more than a
    ``gamma`` fraction of updates is unclipped and grows otherwise, so it moves to the
    ``gamma`` quantile of the norms; for ``b`` in ``[0, 1]`` one round changes it by at
    most a factor ``exp(eta)``. Andrew et al. recommend ``gamma = 0.5`` (the median) and
    ``eta = 0.2``.

    :raises ConfigError: for a ``target_quantile`` outside ``(0, 1)``, a negative
        ``learning_rate`` or a ``clip`` that is not finite and > 0.
    """
    if not (_is_number(clip) and math.isfinite(clip) and clip > 0):
        raise ConfigError("clip", clip, "a finite number > 0")
    if not (_is_number(target_quantile) and 0 < target_quantile < 1):
        raise ConfigError("target_quantile", target_quantile, "a number in (0, 1)")
    if not (_is_number(learning_rate) and math.isfinite(learning_rate) and learning_rate >= 0):
        raise ConfigError("learning_rate", learning_rate, "a finite number >= 0")
    if not (_is_number(noisy_fraction_below) and math.isfinite(noisy_fraction_below)):
        raise ValueError(f"noisy_fraction_below must be finite, got {noisy_fraction_below!r}")
    return clip * math.exp(-learning_rate * (noisy_fraction_below - target_quantile))


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
