"""The algorithms as pure math: aggregation, DP, server optimizers, attacks, models.

Each module holds functions over stacked ``[n_clients, dim]`` tensors (or plain
models), cited to its paper, with no knowledge of plugins or rounds; the built-in
plugins in :mod:`privfl.builtin` are thin adapters around them.
"""
