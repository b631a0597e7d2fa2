"""Bytes that would travel between the parties, and the opening log.

Every opening sends each compute party's share to the other: 2 * 8 bytes per element
(online bytes, one communication round per call), or 2 * width / 8 bytes when only the
low ``width`` bits of each word are opened (masked bits and bit fields of the comparison
circuit travel packed); a value that one party holds alone travels one way only, 8 bytes
an element (:meth:`~privfl.smpc.session.Session.open_held`). The dealer sends each party
its shares of the correlated randomness (offline bytes, counted as whole words: the
three-process run cuts them, :mod:`privfl.smpc.dealer_streams`). The model owner and the
data owner send one share of each input to each compute party (input bytes).

:class:`OpeningLog` records every value the protocol reconstructs, with a label saying
why it was safe to open, so tests can check that nothing else is ever revealed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from privfl.smpc.channel import packed_size


class OpeningKind(str, enum.Enum):
    """Why an opened value reveals nothing beyond the agreed outputs."""

    BEAVER_MASKED = "beaver-masked"  # e = x - a, f = y - b, a and b uniform dealer values
    AND_MASKED = "and-masked"  # d = x ^ a, e = y ^ b for an AND gate, a and b uniform
    BIT_MASKED = "bit-masked"  # c = bits ^ r for uniform dealer bits r (a bit or a field)
    OUTPUT = "output"  # an agreed result: predictions or the count of correct predictions


@dataclass
class Opening:
    """One reconstruction: its label, the shape of the opened words, their width in bits
    and (if kept) the opened values: the words, or for a width below 64 their low bits
    as 0/1 values with one more dimension of size ``width``."""

    kind: OpeningKind
    shape: tuple[int, ...]
    values: torch.Tensor | None
    width: int = 64


@dataclass
class OpeningLog:
    """Every value reconstructed in a session, in order."""

    keep_values: bool = True
    entries: list[Opening] = field(default_factory=list)

    def record(self, kind: OpeningKind, values: torch.Tensor, width: int = 64) -> None:
        """Append one opening of ``width``-bit fields (values kept only if ``keep_values``)."""
        kept = None
        if self.keep_values:
            kept = values.detach().clone()
            if width < 64:
                positions = torch.arange(width, device=values.device)
                kept = (kept.unsqueeze(-1) >> positions) & 1
        self.entries.append(Opening(kind, tuple(values.shape), kept, width))

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

    def count_opening(self, numel: int, width: int = 64, new_round: bool = True) -> None:
        """One opening of ``numel`` fields of ``width`` bits: each party sends its share,
        packed (:func:`privfl.smpc.channel.packed_size`); ``new_round=False`` where it
        travels in a round already counted."""
        self.online_bytes += 2 * packed_size(numel, width)
        self.rounds += int(new_round)
