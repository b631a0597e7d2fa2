"""An owner's epsilon after its DP-SGD steps, from Opacus' RDP accountant.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS) with
Poisson sampling at rate ``q`` and noise multiplier ``sigma`` is the subsampled
Gaussian mechanism, step after step; Opacus' :class:`~opacus.accountants.RDPAccountant`
composes its Renyi-DP (Mironov 2017; Mironov, Talwar and Zhang 2019) and converts it
to (epsilon, delta). Here that accountant is given the owner's whole history at once,
``steps`` steps of the same ``(sigma, q)``, which is what it records itself when it is
stepped ``steps`` times, so the epsilon is Opacus' own.
"""

from __future__ import annotations

from opacus.accountants import RDPAccountant


def owner_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` DP-SGD steps with ``noise_multiplier`` at ``sample_rate``."""
    if steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))
