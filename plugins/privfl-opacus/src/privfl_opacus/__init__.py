"""privfl-opacus: record-level differential privacy for cross-silo federations.

Pass a :class:`DPSGD` trainer to :class:`privfl.Federation` (``trainer=DPSGD(...)``):
each data owner then trains with Opacus' DP-SGD on its own rows and accounts its own
(epsilon, delta), the guarantee two hospitals or two banks need for their records.
privfl's client-level DP (the ``dp`` mechanism) can run beside it; its epsilon is
about whole owners, and with a few owners it protects little.

This module is the plugin privfl loads from the entry point ``opacus``. Its hooks:

- ``privfl_configure`` refuses what DP-SGD cannot do here: models with layers Opacus
  has no per-sample gradients for (BatchNorm, ...), and the vectorized executor, which
  trains a round's clients as one stacked computation (use ``executor="serial"`` or
  ``"process"``);
- ``privfl_update_received`` collects each owner's ``owner_epsilon``;
- ``privfl_round_finish`` puts them in the round's record, as ``owner_epsilon``
  (owner id -> epsilon) and ``max_owner_epsilon``;
- ``privfl_should_stop`` stops the run before a round would take an owner past the
  trainer's ``target_epsilon``.

Behind secure aggregation the server sees no owner's statistics, only their mean, so
the record then holds no per-owner epsilon (the owners still know their own).
"""

from __future__ import annotations

from privfl.errors import ConfigError
from privfl.plugins import hookimpl
from privfl_opacus.accounting import owner_epsilon
from privfl_opacus.trainer import DPSGD, OwnerDPSGD

__all__ = ["DPSGD", "OwnerDPSGD", "owner_epsilon"]

STASH = "opacus"
"""The federation's stash key: the round's epsilons reported so far, by owner."""


def _dp_sgd(federation) -> DPSGD | None:
    trainer = getattr(federation, "trainer", None)
    return trainer if isinstance(trainer, DPSGD) else None


@hookimpl
def privfl_configure(federation) -> None:
    trainer = _dp_sgd(federation)
    if trainer is None:
        return
    if federation.executor.name == "vectorized":
        raise ConfigError(
            "executor",
            "vectorized",
            "serial or process with trainer dp-sgd: each owner trains on its own, with its "
            "own per-sample clipping and noise, not in one stacked computation",
        )
    trainer.check(federation.model)


@hookimpl
def privfl_update_received(federation, round: int, result) -> None:
    if _dp_sgd(federation) is None or "owner_epsilon" not in result.statistics:
        return
    seen = federation.stash.setdefault(STASH, {"round": round, "epsilon": {}, "next": {}})
    if seen["round"] != round:
        seen.update(round=round, epsilon={}, next={})
    seen["epsilon"][str(result.client_id)] = result.statistics["owner_epsilon"]
    seen["next"][str(result.client_id)] = result.statistics["owner_epsilon_next"]


@hookimpl
def privfl_round_finish(federation, record) -> None:
    seen = federation.stash.get(STASH)
    if _dp_sgd(federation) is None or not seen or seen["round"] != record.round:
        return
    record.values["owner_epsilon"] = dict(seen["epsilon"])
    record.values["max_owner_epsilon"] = max(seen["epsilon"].values())


@hookimpl
def privfl_should_stop(federation, record) -> str | None:
    trainer = _dp_sgd(federation)
    seen = federation.stash.get(STASH)
    if trainer is None or trainer.target_epsilon is None or not seen:
        return None
    if seen["round"] == record.round and max(seen["next"].values()) > trainer.target_epsilon:
        spent = max(seen["epsilon"].values())
        return (
            f"record-level privacy budget: an owner's epsilon is {spent:.3g}, and one more "
            f"round would take it past the target {trainer.target_epsilon:g}"
        )
    return None
