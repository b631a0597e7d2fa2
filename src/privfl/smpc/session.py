"""A simulated two-party session: owners, compute parties 0 and 1, and the dealer.

Threat model: two non-colluding, semi-honest (honest-but-curious) compute parties hold
additive shares; a trusted dealer that colludes with neither hands out correlated
randomness and never receives a share of a secret. The model owner and the data owner
share their inputs and see only the agreed outputs. All parties run in this process; the
simulation keeps each party's view separable (shares stacked on dimension 0) and routes
every reconstruction through :meth:`~privfl.smpc.session.Session.open`, which logs it
and counts its bytes.

:meth:`Session.run_two_phase` separates the offline phase (the dealer's work, planned by
running the protocol once on shape-only meta tensors) from the online phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from privfl.smpc.dealer import Dealer, RecordingDealer, Request
from privfl.smpc.prg import ChaChaPRG
from privfl.smpc.ring import DEFAULT_FRAC_BITS, FixedPoint
from privfl.smpc.ring_matmul import get_ring_matmul
from privfl.smpc.shared import BOTH, BinarySharedTensor, Parties, SharedTensor, reconstruct, share
from privfl.smpc.traffic import OpeningKind, OpeningLog, Traffic

T = TypeVar("T")
Opened = tuple[SharedTensor | BinarySharedTensor, OpeningKind, int]
"""One part of :meth:`Session.open_many`: a sharing, why it may be opened, its width."""


@dataclass(frozen=True)
class PhaseTimes:
    """Wall-clock seconds of the offline (dealer) and online phases of one run."""

    offline_s: float
    online_s: float

    @property
    def total_s(self) -> float:
        """Offline plus online seconds."""
        return self.offline_s + self.online_s


class Session:
    """State of one secure computation: encoder, randomness, dealer, log and traffic.

    ``seed`` makes all randomness reproducible for tests and is NOT secure; leave it None
    for keys from ``os.urandom``. ``matmul_method`` picks the exact ring matmul ("int64"
    or "limb", see :mod:`privfl.smpc.ring_matmul`) for the dealer and the online phase.
    ``keep_opened_values=False`` keeps only labels and shapes in the log (saves memory).
    """

    def __init__(
        self,
        frac_bits: int = DEFAULT_FRAC_BITS,
        seed: int | str | None = None,
        matmul_method: str = "int64",
        keep_opened_values: bool = True,
    ) -> None:
        root = ChaChaPRG(seed)
        self.encoder = FixedPoint(frac_bits)
        self.matmul = get_ring_matmul(matmul_method)
        self.matmul_method = matmul_method
        self.parties: Parties = BOTH  # whose shares this process holds: both
        self.owner_prg = root.child("owners")
        self.traffic = Traffic()
        self.log = OpeningLog(keep_values=keep_opened_values)
        self.dealer: Dealer = Dealer(root.child("dealer"), self.traffic, self.matmul)

    @property
    def frac_bits(self) -> int:
        """Fractional bits of the fixed-point encoding."""
        return self.encoder.frac_bits

    def share_float(self, x: torch.Tensor) -> SharedTensor:
        """An owner encodes real values in fixed point and shares them with both parties."""
        return self.share_ring(self.encoder.encode(x))

    def share_ring(self, x: torch.Tensor) -> SharedTensor:
        """An owner shares int64 ring elements (e.g. one-hot labels) with both parties."""
        shared = share(x, self.owner_prg)
        self.traffic.input_bytes += 8 * shared.shares.numel()
        return shared

    def open(
        self, x: SharedTensor | BinarySharedTensor, kind: OpeningKind, width: int = 64
    ) -> torch.Tensor:
        """Reconstruct ``x``: the only place any secret-shared value becomes public.

        Each party sends its share to the other (counted in ``traffic``), and the
        opened values are recorded in ``log`` under ``kind``. With ``width`` below 64
        only the low ``width`` bits of each word are opened (the others read as zero).
        """
        return self.open_many([(x, kind, width)])[0]

    def open_many(self, parts: Sequence[Opened]) -> list[torch.Tensor]:
        """Open several sharings in one round, each ``(sharing, kind, width)`` as
        :meth:`open` does (a masked bit and a masked word can travel together)."""
        out = []
        for x, kind, width in parts:
            values = reconstruct(x)
            if width < 64:
                values = values & ((1 << width) - 1)
            self.traffic.count_opening(x.numel(), width, new_round=False)
            self.log.record(kind, values, width)
            out.append(values)
        self.traffic.rounds += 1
        return out

    def open_held(
        self, mine0: BinarySharedTensor, mine1: BinarySharedTensor, kind: OpeningKind
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Open ``mine0``, which party 0 holds alone (party 1's share is 0), and
        ``mine1``, which party 1 holds alone, in one round: each party sends the other
        its own, one word an element each way instead of two."""
        values = (reconstruct(mine0), reconstruct(mine1))
        for v in values:
            self.traffic.online_bytes += 8 * v.numel()
            self.log.record(kind, v)
        self.traffic.rounds += 1
        return values

    def plan(self, fn: Callable[..., Any], *args: Any) -> list[Request]:
        """The dealer requests ``fn(session, *args)`` makes, found on shape-only tensors.

        Arguments with a ``to_meta`` method (sharings, shared models) are replaced by meta
        copies; the run touches no real data, opens nothing real and costs little time.
        """
        recorder = _PlanningSession.__new__(_PlanningSession)
        recorder.encoder = self.encoder
        recorder.matmul = self.matmul
        recorder.matmul_method = self.matmul_method
        recorder.traffic = Traffic()
        recorder.log = OpeningLog(keep_values=False)
        recorder.parties = self.parties
        recording = RecordingDealer(self.parties)
        recorder.dealer = recording
        fn(recorder, *(a.to_meta() if hasattr(a, "to_meta") else a for a in args))
        return recording.requests

    def run_two_phase(self, fn: Callable[..., T], *args: Any) -> tuple[T, PhaseTimes]:
        """Run ``fn(self, *args)`` with all dealer material generated ahead of time.

        Returns the result and the offline (planning and dealer generation) and online
        wall-clock times. The online phase fails loudly if it asks the dealer for anything
        the plan did not foresee.
        """
        start = time.perf_counter()
        self.dealer.precompute(self.plan(fn, *args))
        offline = time.perf_counter() - start
        start = time.perf_counter()
        dealer_before = self.dealer.seconds
        result = fn(self, *args)
        online = time.perf_counter() - start - (self.dealer.seconds - dealer_before)
        if self.dealer.pending():
            raise RuntimeError(f"{self.dealer.pending()} precomputed items were not used")
        return result, PhaseTimes(offline_s=offline, online_s=online)


class _PlanningSession(Session):
    """The stand-in session of :meth:`Session.plan`: its openings are shape-only, so it
    plans for any layout of shares (a party process holds only its own)."""

    def open_many(self, parts: Sequence[Opened]) -> list[torch.Tensor]:
        return [torch.empty(x.shape, dtype=torch.int64, device="meta") for x, _, _ in parts]

    def open_held(
        self, mine0: BinarySharedTensor, mine1: BinarySharedTensor, kind: OpeningKind
    ) -> tuple[torch.Tensor, torch.Tensor]:
        meta = torch.empty(mine0.shape, dtype=torch.int64, device="meta")
        return meta, meta
