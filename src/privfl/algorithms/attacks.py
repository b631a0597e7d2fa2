"""Attacks by Byzantine clients, as pure functions over labels and stacked updates.

Used by the built-in attack plugins (:mod:`privfl.builtin.attacks`) to test robust
aggregation (Yin et al. 2018; Blanchard et al. 2017) against the attacks of the
literature:

* label flipping: a malicious client trains on label ``C - 1 - y`` instead of ``y``
  (Biggio et al. 2012; Fang et al. 2020, "Local Model Poisoning Attacks to
  Byzantine-Robust Federated Learning", USENIX Security);
* sign flipping and scaling: the client sends ``-s * update``;
* Gaussian updates: the client sends noise N(0, sigma^2 I) (Blanchard et al. 2017);
* "A Little Is Enough" (Baruch et al. 2019, NeurIPS): colluding clients send
  ``mean - z * std`` of the benign updates, coordinate-wise, with ``z`` the largest
  shift that keeps them inside the population a majority-based rule accepts.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def flip_labels(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map each label ``y`` to ``num_classes - 1 - y``; floating-point targets (a
    regression task) have no labels to flip and are refused."""
    if targets.is_floating_point():
        raise ValueError("label flipping needs integer class labels, not float targets")
    return (num_classes - 1) - targets


def sign_flip(updates: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``-scale * updates``."""
    return -scale * updates


def gaussian_updates(
    shape: torch.Size, sigma: float, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """Return updates of pure noise with standard deviation ``sigma``."""
    return sigma * torch.randn(shape, generator=generator, dtype=dtype)


def alie_z(num_clients: int, num_malicious: int) -> float:
    """The shift ``z_max`` of "A Little Is Enough" (Baruch et al. 2019, Algorithm 3).

    With ``s = floor(n / 2 + 1) - f`` benign clients the attackers must win over,
    ``z_max`` is the standard normal quantile of ``(n - s) / n``.
    """
    supporters = math.floor(num_clients / 2 + 1) - num_malicious
    return NormalDist().inv_cdf((num_clients - supporters) / num_clients)


def alie_updates(honest: torch.Tensor, num_malicious: int, z: float) -> torch.Tensor:
    """``num_malicious`` copies of ``mean - z * std`` of the honest updates (coordinate-wise).

    :param honest: ``[k, dim]`` updates computed honestly this round (the attackers'
        own and, when they collude with knowledge of them, the benign ones), k >= 2.
    """
    mean = honest.mean(dim=0)
    std = honest.std(dim=0, unbiased=True) if len(honest) > 1 else torch.zeros_like(mean)
    return (mean - z * std).expand(num_malicious, -1).clone()
