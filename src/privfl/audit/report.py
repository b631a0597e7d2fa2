"""An audit of a DP run: the accountant's epsilon next to what canaries show.

:func:`audit_federation` runs a federation built with the canaries of a
:class:`~privfl.audit.canaries.CanaryAudit` and turns the canaries' statistics into an
:class:`AuditReport`: the provable one-run lower bound (:mod:`privfl.audit.one_run`),
Andrew et al.'s estimates for an adversary who sees every round's model and for one who
sees only the final model (:mod:`privfl.audit.estimators`), and the epsilon the
accountant claims.
:func:`audit` is the front door for a federation described by
:class:`~privfl.Federation`'s keyword arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from privfl.audit import estimators, one_run
from privfl.audit.canaries import CanaryAudit, CanaryScores
from privfl.client_data import client_data_source
from privfl.errors import ConfigError
from privfl.federation import Federation
from privfl.records import RoundRecord

RESAMPLES = 1000
"""Bootstrap resamples behind each estimate's interval."""


@dataclass(frozen=True)
class AuditReport:
    """What an audit found, with the claim it checks.

    :ivar claimed_epsilon: The accountant's epsilon after the audit run's rounds.
    :ivar delta: The delta of every number here.
    :ivar rounds: Rounds the audit run trained.
    :ivar canaries: Canaries drawn (``m``); about half were included.
    :ivar included: Canaries included (the others sent zeros when drawn).
    :ivar confidence: Confidence of the bound and the intervals.
    :ivar lower_bound: Steinke et al.'s provable lower bound (all rounds' models).
    :ivar ceiling: The largest lower bound this many canaries can give (all guesses right).
    :ivar all_iterates: Andrew et al.'s estimate for an adversary who sees every round.
    :ivar final_model: Their estimate for an adversary who sees only the final model.
    :ivar all_iterates_bound: The conservative threshold-test bound on the same statistics.
    :ivar final_model_bound: The same for the final model.
    """

    claimed_epsilon: float
    delta: float
    rounds: int
    canaries: int
    included: int
    confidence: float
    lower_bound: one_run.OneRunBound
    ceiling: float
    all_iterates: estimators.Estimate
    final_model: estimators.Estimate
    all_iterates_bound: float
    final_model_bound: float

    @property
    def refuted(self) -> bool:
        """True when the provable lower bound exceeds the claim: the claim is false."""
        return self.lower_bound.epsilon > self.claimed_epsilon

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values, with :meth:`summary`'s sentences."""
        values = asdict(self)
        values["refuted"] = self.refuted
        values["summary"] = self.summary()
        return values

    def summary(self) -> list[str]:
        """What each number means and does not mean, in plain sentences."""
        percent = f"{self.confidence:.0%}"
        bound = self.lower_bound.epsilon
        lines = [
            f"Claimed: epsilon {self.claimed_epsilon:.4g} at delta {self.delta:g} after "
            f"{self.rounds} rounds, from the accountant. It promises that no adversary, even "
            "one who sees every round's model, can tell whether any one client took part "
            "beyond what (epsilon, delta)-DP allows.",
            f"Provable lower bound: {bound:.4g} ({percent} confidence; Steinke et al. 2023, "
            f"{self.lower_bound.correct} of {self.lower_bound.guesses} guesses right about "
            f"which of {self.canaries} canaries were included). "
            + (
                f"It EXCEEDS the claim: at {percent} confidence this run is not "
                f"{self.claimed_epsilon:.4g}-DP. Look for missing or mis-scaled noise, "
                "clipping that does not bound the update, or sampling accounted wrongly."
                if self.refuted
                else "It is at or under the claim, as it must be if the claim holds. It "
                "does not show the claim is tight, nor that the run is private: this audit "
                f"could not prove more than {self.ceiling:.3g}, and a weak attack proves "
                "little."
            ),
            _estimate_line(
                "All-iterates estimate",
                self.all_iterates,
                "an adversary who sees every round's model (the claim's threat model)",
                self.claimed_epsilon,
            ),
            _estimate_line(
                "Final-model estimate",
                self.final_model,
                "an adversary who sees only the final model",
                self.claimed_epsilon,
            )
            + " It is often far below the claim: the accountant covers every round's "
            "model, while in the final model the noise of all rounds hides each one's "
            "canary.",
            "Estimates are not bounds: they assume the canaries' statistics are Gaussian "
            "and measure only this attack (canaries that send a fixed direction); the "
            "conservative threshold-test bounds on the same statistics are "
            f"{self.all_iterates_bound:.3g} (all iterates) and {self.final_model_bound:.3g} "
            "(final model). The canaries trained a separate audit run; no model a user "
            "keeps holds them.",
        ]
        return lines


def _estimate_line(title: str, estimate: estimators.Estimate, who: str, claimed: float) -> str:
    line = (
        f"{title}: {estimate.epsilon:.3g} (interval {estimate.low:.3g} to {estimate.high:.3g}; "
        f"Andrew et al. 2024) for {who}."
    )
    if estimate.low > claimed:
        line += (
            " Its interval lies ABOVE the claim: a finding to investigate (the estimate is "
            "not a proof, but it should not exceed a true epsilon)."
        )
    return line


def audit_federation(
    federation: Federation,
    canaries: CanaryAudit,
    rounds: int,
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    console: Any = None,
) -> AuditReport:
    """Run ``federation`` (built on ``canaries.population(...)``) with its canaries; report.

    :param rounds: The rounds to train (``federation.run(rounds)``).
    :param confidence: Of the provable bound, the threshold-test bounds and the intervals.
    :param resamples: Bootstrap resamples behind each estimate's interval.
    :param console: A :class:`rich.console.Console` for progress, or None.
    """
    if not 0 < confidence < 1:
        raise ConfigError("confidence", confidence, "a number in (0, 1), such as 0.95")
    canaries.attach(federation)
    try:
        records = federation.run(rounds, console=console)
    finally:
        canaries.detach()
    claimed, delta = _claim(records)
    return report(canaries.scores(), claimed, delta, confidence=confidence, resamples=resamples)


def report(
    scores: CanaryScores,
    claimed_epsilon: float,
    delta: float,
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> AuditReport:
    """Turn canary statistics into an :class:`AuditReport` (pure: no training)."""
    alpha = round(1 - confidence, 12)  # 0.05, not 0.050000000000000044
    seen, unseen = scores.included, ~scores.included
    if seen.sum() < 2 or unseen.sum() < 2:
        raise ConfigError(
            "canaries", len(seen), "enough canaries for two included and two excluded"
        )
    bound = one_run.one_run_lower_bound(scores.iterates, seen, beta=alpha, delta=delta)
    ceiling = one_run.ceiling(len(seen), beta=alpha, delta=delta)
    common: dict[str, Any] = {
        "delta": delta,
        "confidence": confidence,
        "resamples": resamples,
        "seed": seed,
    }
    return AuditReport(
        claimed_epsilon=claimed_epsilon,
        delta=delta,
        rounds=scores.rounds,
        canaries=len(seen),
        included=int(seen.sum()),
        confidence=confidence,
        lower_bound=bound,
        ceiling=ceiling,
        all_iterates=estimators.estimate_epsilon(
            scores.iterates[seen], unseen=scores.iterates[unseen], **common
        ),
        final_model=estimators.estimate_epsilon(scores.final[seen], dim=scores.dim, **common),
        all_iterates_bound=estimators.epsilon_lower_bound(
            scores.iterates[seen], unseen=scores.iterates[unseen], alpha=alpha, delta=delta
        ),
        final_model_bound=estimators.epsilon_lower_bound(
            scores.final[seen], dim=scores.dim, alpha=alpha, delta=delta
        ),
    )


def audit(
    *,
    rounds: int,
    canaries: int = 1000,
    canary_seed: int = 0,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    **federation: Any,
) -> AuditReport:
    """Audit the DP of the federation that ``federation``'s keyword arguments describe.

    A separate audit federation is built from them (:class:`~privfl.Federation`'s
    ``train`` and ``partition``, or ``client_data``, plus every other argument) with
    ``canaries`` canaries drawn from ``canary_seed``, and trained for ``rounds`` rounds;
    nothing of it is returned but the report.
    """
    drawn = CanaryAudit(canaries, seed=canary_seed)
    data = client_data_source(
        federation.pop("train", None),
        federation.pop("partition", None),
        federation.pop("client_data", None),
    )
    built = Federation(client_data=drawn.population(data), **federation)
    with built:
        return audit_federation(built, drawn, rounds, confidence=confidence, resamples=resamples)


def _claim(records: list[RoundRecord]) -> tuple[float, float]:
    """The accountant's last epsilon and its delta, from the rounds' records."""
    claims = [r.values for r in records if "epsilon" in r.values and "delta" in r.values]
    if not claims:
        raise ConfigError(
            "mechanisms", "no epsilon in the records", "a DP mechanism that reports epsilon"
        )
    return float(claims[-1]["epsilon"]), float(claims[-1]["delta"])
