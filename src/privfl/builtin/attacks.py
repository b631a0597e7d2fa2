"""Built-in attacks: label flipping, sign flipping, Gaussian updates, A Little Is Enough.

Thin classes around :mod:`privfl.algorithms.attacks`. Select one with ``--attack NAME`` and the
malicious clients with ``--malicious-fraction``.
"""

from __future__ import annotations

import torch

from privfl.algorithms import attacks
from privfl.components import Attack
from privfl.options import positive_number
from privfl.plugins import hookimpl


class LabelFlip(Attack):
    """Malicious clients train on flipped labels ``C - 1 - y``."""

    name = "label-flip"
    needs_labels = True

    def poison_targets(self, targets: torch.Tensor, *, num_classes: int) -> torch.Tensor:
        return attacks.flip_labels(targets, num_classes)


class SignFlip(Attack):
    """Malicious clients send their update negated and scaled by ``scale``.

    :param scale: How much the negated update is scaled, > 0.
    """

    name = "sign-flip"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = positive_number("scale", scale)

    def poison_updates(self, malicious, benign, *, generator):
        return attacks.sign_flip(malicious, self.scale)


class GaussianAttack(Attack):
    """Malicious clients send Gaussian noise with standard deviation ``sigma``.

    :param sigma: The noise's standard deviation, > 0.
    """

    name = "gaussian"

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = positive_number("sigma", sigma)

    def poison_updates(self, malicious, benign, *, generator):
        return attacks.gaussian_updates(malicious.shape, self.sigma, generator, malicious.dtype)


class LittleIsEnough(Attack):
    """ "A Little Is Enough" (Baruch et al. 2019): ``mean - z * std`` of the honest updates.

    The attackers collude and know the round's benign updates (the strongest,
    omniscient variant); ``z`` is the paper's ``z_max`` for the round's numbers of
    clients and attackers, unless the option ``z`` fixes it.

    :param z: How many standard deviations the attack shifts; unset: the paper's z_max.
    """

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else positive_number("z", z)

    def poison_updates(self, malicious, benign, *, generator):
        honest = torch.cat([benign, malicious])
        total = len(honest)
        z = self.z if self.z is not None else attacks.alie_z(total, len(malicious))
        return attacks.alie_updates(honest, len(malicious), z)


@hookimpl
def privfl_register_attacks() -> list[type]:
    return [LabelFlip, SignFlip, GaussianAttack, LittleIsEnough]
