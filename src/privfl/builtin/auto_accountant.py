"""The default accountant: PLD where it applies and stays affordable, RDP otherwise.

Both accountants of :mod:`privfl.builtin.accountants` give sound upper bounds; PLD's is
the tighter (RDP's epsilon measured 8 to 87% higher), but dp-accounting's PLD cannot
account every run, and its grid grows as the privacy loss does. ``auto`` is always
exactly one of them, chosen from the rounds composed, by :func:`choose_accountant`:

- ``rdp`` for a fixed-size cohort (the ``uniform`` sampler, sampling without
  replacement), which dp-accounting's PLD does not support;
- ``rdp`` for a noise multiplier below ``PLD_MIN_NOISE``: PLD's grid grows as
  ``1/z^2``. Measured on its 1e-3 grid with dp-accounting 0.6 and the machine busy
  (load average 10 to 15), one round at q = 0.1 (everyone) takes 0.9 s at z = 0.3,
  1.4 s at 0.2, 2.4 s (0.9 s) at 0.1, 18 s (5 s) at 0.03, over 120 s (41 s) at 0.01,
  and fails at 1e-3 (``MemoryError``: 3.8 GiB, 7.6 GiB) and at 1e-9 ("Maximum allowed
  size exceeded"); 100 rounds at q = 0.1 take 1.2 s at z = 0.3 and 11 s at 0.1. One
  round alone below 0.3 already costs epsilon above 15 at q = 0.1;
- ``rdp`` once ``mu^2 = sum(rounds * q^2 / z^2)`` exceeds ``PLD_MAX_MU_SQUARED``
  (q = 1 for everyone): for full participation ``mu`` is the Gaussian privacy
  parameter of the composition (Dong, Roth and Su 2022, "Gaussian Differential
  Privacy", JRSS B), whose privacy loss, and PLD's grid, grows as ``mu^2 / 2``;
  beyond it epsilon exceeds 90 at delta 1e-5 (for everyone; Poisson sampling at
  z >= 0.3 has a larger ``mu`` still, Bu et al. 2020, "Deep Learning with Gaussian
  Differential Privacy") and the tighter bound no longer matters;
- ``pld`` otherwise: Poisson sampling or everyone, at the noise that DP-FedAvg uses.

Once a run leaves PLD's range it stays with RDP, which recomposes every round so far:
the choice depends only on the rounds composed, so a checkpoint's load makes the same
choice and gives the same epsilon to the last bit. ``AutoPrivacyAccountant.method``
names the accountant in use and why; the DP mechanism writes it into the record of a
run's first round, of the first round after a resume, and of any round where it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from privfl.builtin.accountants import (
    RdpPrivacyAccountant,
    _check_delta,
    _check_noise,
    _check_rounds,
    _DpAccountingAccountant,
    _parse_record,
)
from privfl.builtin.pld_accountant import PldPrivacyAccountant
from privfl.components import Sampling
from privfl.mechanisms import Accountant

PLD_MIN_NOISE = 0.3
"""The smallest noise multiplier that ``auto`` accounts with PLD (see the module docstring)."""
PLD_MAX_MU_SQUARED = 100.0
"""The largest ``sum(rounds * q^2 / z^2)`` that ``auto`` accounts with PLD."""


def choose_accountant(runs: Sequence[tuple[Sampling, float, int]]) -> tuple[str, str]:
    """Return the name of the accountant ``auto`` uses for ``runs`` (sampling, noise
    multiplier and number of rounds of each stretch of rounds), and why, in words."""
    if any(sampling.kind == "fixed" for sampling, _, _ in runs):
        # (sampling without replacement, which dp-accounting's PLD does not support)
        return "rdp", "a fixed-size cohort; PLD needs --sampler poisson"
    if runs and (low := min(z for _, z, _ in runs)) < PLD_MIN_NOISE:
        return "rdp", f"noise multiplier {low:g} < {PLD_MIN_NOISE:g}, too small for PLD's grid"
    mu_squared = sum(rounds * _rate(sampling) ** 2 / z**2 for sampling, z, rounds in runs)
    if mu_squared > PLD_MAX_MU_SQUARED:
        # epsilon is then above about 90, and PLD's grid grows with it
        return (
            "rdp",
            f"sum of rounds q^2/z^2 {mu_squared:.4g} > {PLD_MAX_MU_SQUARED:g}, too large for PLD",
        )
    return "pld", "Poisson sampling or everyone: the tightest bound"


def _rate(sampling: Sampling) -> float:
    return sampling.rate if sampling.kind == "poisson" and sampling.rate is not None else 1.0


class AutoPrivacyAccountant(Accountant):
    """The tightest sound accountant that applies: ``pld`` or ``rdp``, chosen per run.

    Its epsilon is exactly that of the accountant it names in ``method`` (see the
    module docstring for the choice). A state of the ``rdp`` or ``pld`` accountant (a
    checkpoint written before ``auto`` was the default) is loaded as it is and
    accounted by that accountant from then on, so a resumed run reports the same
    epsilon.

    :param orders: The Rényi orders of the ``rdp`` accountant it may use.
    :param value_discretization_interval: The grid step of the ``pld`` accountant.
    """

    name = "auto"

    def __init__(
        self,
        *,
        orders: Sequence[float] | None = None,
        value_discretization_interval: float = 1e-3,
    ) -> None:
        checked = RdpPrivacyAccountant(orders=orders).orders  # checked now, not mid-run
        # partials, not lambdas: the mechanism travels to worker processes by pickle
        self._options: dict[str, Callable[[], _DpAccountingAccountant]] = {
            "rdp": partial(RdpPrivacyAccountant, orders=checked),
            "pld": partial(
                PldPrivacyAccountant, value_discretization_interval=value_discretization_interval
            ),
        }
        self._inner = self._options["pld"]()
        self._reason = choose_accountant(())[1]
        self._pinned = False

    @property
    def neighbouring(self) -> str:
        return self._inner.neighbouring

    @property
    def method(self) -> str:
        """The accountant in use and why, for example ``rdp: a fixed-size cohort ...``."""
        return f"{self._inner.name}: {self._reason}"

    def compose(self, *, sampling: Sampling, noise_multiplier: float, rounds: int = 1) -> None:
        inner, reason = self._for(sampling, noise_multiplier, rounds)
        inner.compose(sampling=sampling, noise_multiplier=noise_multiplier, rounds=rounds)
        if rounds:  # 0 rounds: only a check
            self._inner, self._reason = inner, reason

    def epsilon(self, delta: float) -> float:
        return self._inner.epsilon(delta)

    def epsilon_after(
        self, *, sampling: Sampling, noise_multiplier: float, rounds: int, delta: float
    ) -> float:
        _check_delta(delta)
        inner, _ = self._for(sampling, noise_multiplier, rounds)
        after = inner.epsilon_after(
            sampling=sampling, noise_multiplier=noise_multiplier, rounds=rounds, delta=delta
        )
        return after if rounds else self.epsilon(delta)

    def state_dict(self) -> dict[str, Any]:
        """The state of the accountant in use, named ``auto`` unless it was pinned by a
        loaded ``rdp`` or ``pld`` state."""
        state = self._inner.state_dict()
        return state if self._pinned else {**state, "accountant": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Recompose ``state`` with the accountant ``auto`` chooses for it (or, for a state
        of ``rdp`` or ``pld``, with that accountant); refuse any other state."""
        name = state.get("accountant")
        composed = state.get("composed")
        if name not in (self.name, "rdp", "pld") or not isinstance(composed, list):
            raise ValueError(
                f"not a state of the {self.name!r} accountant: expected keys 'accountant' = "
                f"{self.name!r} (or 'rdp' or 'pld') and 'composed' (a list), got {dict(state)!r}"
            )
        runs = []
        for record in composed:
            sampling, noise_multiplier, rounds = _parse_record(record)
            runs.append((sampling, _check_noise(noise_multiplier), _check_rounds(rounds)))
        pinned = name != self.name
        if pinned:
            chosen, reason = name, "the accountant of the checkpoint this run resumed from"
        else:
            chosen, reason = choose_accountant(runs)
        inner = self._options[chosen]()
        inner.load_state_dict({**state, "accountant": chosen})
        self._inner, self._reason, self._pinned = inner, reason, pinned

    def _for(
        self, sampling: Sampling, noise_multiplier: float, rounds: int
    ) -> tuple[_DpAccountingAccountant, str]:
        """The accountant (the one in use, or a new one with the runs so far) and the reason
        for composing ``rounds`` more rounds; checks the request first."""
        if not isinstance(sampling, Sampling):
            raise TypeError(f"sampling must be a privfl.Sampling, got {sampling!r}")
        more = (sampling, _check_noise(noise_multiplier), _check_rounds(rounds))
        if self._pinned:
            return self._inner, self._reason
        runs = [_parse_record(run) for run in self._inner.state_dict()["composed"]]
        chosen, reason = choose_accountant([*runs, more])
        if chosen == self._inner.name:
            return self._inner, reason
        inner = self._options[chosen]()
        inner.load_state_dict({**self._inner.state_dict(), "accountant": chosen})
        return inner, reason
