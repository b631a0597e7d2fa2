"""Bytes that would travel between the parties, and the opening log.

Every opening sends each compute party's share to the other: 2 * 8 bytes per element
(online bytes, one communication round per call). The dealer sends each party its shares
of the correlated randomness (offline bytes). The model owner and the data owner send one
share of each input to each compute party (input bytes). Bits are counted as whole int64
words, as they are sent by this implementation; packing would shrink the bit openings.

:class:`OpeningLog` records every value the protocol reconstructs, with a label saying
why it was safe to open, so tests can check that nothing else is ever revealed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch


class OpeningKind(str, enum.Enum):
    """Why an opened value reveals nothing beyond the agreed outputs."""

    BEAVER_MASKED = "beaver-masked"  # e = x - a, f = y - b, a and b uniform dealer values
    AND_MASKED = "and-masked"  # d = x ^ a, e = y ^ b for an AND gate, a and b uniform
    BIT_MASKED = "bit-masked"  # c = bit ^ r for a uniform dealer bit r
    OUTPUT = "output"  # an agreed result: predictions or the count of correct predictions


@dataclass
class Opening:
    """One reconstruction: its label, the shape and (if kept) the opened values."""

    kind: OpeningKind
    shape: tuple[int, ...]
    values: torch.Tensor | None


@dataclass
class OpeningLog:
    """Every value reconstructed in a session, in order."""

    keep_values: bool = True
    entries: list[Opening] = field(default_factory=list)

    def record(self, kind: OpeningKind, values: torch.Tensor) -> None:
        """Append one opening (values are kept only if ``keep_values``)."""
        kept = values.detach().clone() if self.keep_values else None
        self.entries.append(Opening(kind, tuple(values.shape), kept))

    def kinds(self) -> set[OpeningKind]:
        """The distinct labels seen so far."""
        return {entry.kind for entry in self.entries}


@dataclass
class Traffic:
    """Communication counters, in bytes, plus the number of online rounds."""

    online_bytes: int = 0
    offline_bytes: int = 0
    input_bytes: int = 0
    rounds: int = 0

    def count_opening(self, numel: int) -> None:
        """One opening of ``numel`` int64 elements: each party sends its share."""
        self.online_bytes += 2 * 8 * numel
        self.rounds += 1
