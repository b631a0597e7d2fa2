"""Where a host's clients write their masked inputs: large blocks, cut into messages
(:meth:`~privfl.secagg.messages.MaskedInput.buffer`)."""

from __future__ import annotations

import threading

import numpy as np


class MessageArena:
    """Cuts :meth:`~privfl.secagg.messages.MaskedInput.buffer` messages out of large
    blocks, for a host that serves many clients a round.

    A buffer of its own per client is page-faulted in anew every round, 4 KiB at a
    time: 100 clients of the 2NN in a 64-bit ring fill 160 MB, about 0.19 s of faults
    on the project's 2-core machine, against 0.07 s in blocks, to which numpy gives huge
    pages (it advises them for arrays of 4 MiB or more). Each message starts a multiple
    of 64 bytes into its (aligned) block, so its words are aligned; a block lives as
    long as a message cut from it does. Thread-safe.
    """

    BLOCK_BYTES = 16 << 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = memoryview(b"")
        self._used = 0

    def take(self, nbytes: int) -> memoryview:
        """A writable buffer of ``nbytes`` bytes (not zeroed)."""
        step = -(-nbytes // 64) * 64
        with self._lock:
            if self._used + step > len(self._block):
                self._block = np.empty(max(self.BLOCK_BYTES, step), np.uint8).data
                self._used = 0
            taken = self._block[self._used : self._used + nbytes]
            self._used += step
        return taken
