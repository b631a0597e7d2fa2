"""Plain data of a round on the server's side: client results and round records.

A :class:`ClientResult` is what the server half reads from a client's ``update``
message; a :class:`RoundRecord` is what a round writes to ``history.jsonl``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClientResult:
    """What the server half read from one client's reply: its update and example count.

    ``statistics`` holds scalars that the client's privacy mechanisms report (see
    :meth:`privfl.PrivacyMechanism.client_step`); they are summed like updates. Under
    secure aggregation the server never holds a client's update, so there is no
    result of this kind then.
    """

    client_id: int
    update: torch.Tensor
    num_examples: int
    train_loss: float
    statistics: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundRecord:
    """What happened in one round, as written to ``history.jsonl``.

    ``metrics`` holds the evaluators' results (empty on rounds without evaluation);
    ``values`` holds anything plugins add (for example ``epsilon``); ``rejected`` maps
    the ids of clients whose update was refused to the reason.
    """

    round: int
    clients: list[int]
    num_examples: int
    train_loss: float
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the record as one flat JSON object (metrics and values at top level)."""
        record: dict[str, Any] = {"round": self.round}
        record.update({k: _finite_or_none(v) for k, v in self.metrics.items()})
        record.update(
            {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in self.values.items()}
        )
        record["train_loss"] = _finite_or_none(self.train_loss)
        record["seconds"] = round(self.seconds, 6)
        record["num_examples"] = self.num_examples
        record["clients"] = self.clients
        record["rejected"] = {str(k): v for k, v in self.rejected.items()}
        return record


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN or infinity: write them as null."""
    return float(value) if math.isfinite(value) else None
