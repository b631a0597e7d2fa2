"""Deterministic seeds derived from one root seed.

Every random choice in a run (model initialisation, partition, each round's sample,
each client's shuffling) draws from a generator whose seed is derived from the root
seed and a path such as ``("client", round, client_id)``. Results therefore do not
depend on the order in which clients run, on the executor, or on whether the run was
resumed from a checkpoint.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(root: int, *path: int | str) -> int:
    """Return a 63-bit seed for ``path`` under ``root``.

    Uses :class:`numpy.random.SeedSequence` (well-mixed, collision-resistant in
    practice); strings in the path are hashed with BLAKE2 so they are stable across
    processes (Python's ``hash`` is salted per process).
    """
    key = [_path_word(p) for p in path]
    state = np.random.SeedSequence(entropy=root, spawn_key=key).generate_state(2, np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


def torch_generator(root: int, *path: int | str) -> torch.Generator:
    """Return a CPU :class:`torch.Generator` seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(root, *path))


def _path_word(part: int | str) -> int:
    if isinstance(part, str):
        return int.from_bytes(hashlib.blake2b(part.encode(), digest_size=4).digest(), "little")
    if part < 0:
        raise ValueError(f"seed path parts must be non-negative, got {part}")
    return part
