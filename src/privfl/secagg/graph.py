"""Who shares with whom: the complete graph of SecAgg and the sparse graph of SecAgg+.

In SecAgg (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", CCS) every client masks with, and secret-shares to, every other
client, so each client does O(n) work and the server O(n^2). SecAgg+ (Bell et al. 2020,
"Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS) does both only
along the edges of a sparse k-regular graph with k = O(log n). As in the authors'
reference implementation (Google's federated-compute, ``fcp/secagg``), the graph is the
Harary graph H(n, k), the circulant graph in which node i is joined to i +- 1, ...,
i +- k/2 (mod n), with node labels permuted at random: a client's k neighbours are then a
uniformly random k-subset of the others, independent of who drops out or is corrupted,
and H(n, k) stays connected unless two runs of k/2 consecutive nodes are removed (see
:mod:`.parameters`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from privfl.errors import ConfigError

Graph = dict[int, frozenset[int]]


def complete_graph(client_ids: Sequence[int]) -> Graph:
    """Every client's neighbours are all the other clients (plain SecAgg)."""
    everyone = frozenset(client_ids)
    return {u: everyone - {u} for u in client_ids}


def harary_graph(client_ids: Sequence[int], degree: int, *, seed: int) -> Graph:
    """The Harary graph H(n, degree) on ``client_ids``, with labels permuted by ``seed``.

    :param client_ids: The ``n`` distinct clients of the round.
    :param degree: An even number ``k`` with ``2 <= k < n - 1``; ``k >= n - 1`` gives
        the complete graph.
    :param seed: Seed of the permutation. Bell et al. need the graph to be independent
        of which clients are corrupted: derive it from a secret the server keeps (the
        round seed), not from anything the clients choose.
    :raises ConfigError: for an odd degree below ``n - 1`` or a degree below 2.
    """
    n = len(client_ids)
    if degree >= n - 1:
        return complete_graph(client_ids)
    if degree < 2 or degree % 2:
        raise ConfigError("degree", degree, f"an even number >= 2 (or >= {n - 1} for all)")
    order = [client_ids[i] for i in np.random.default_rng(seed).permutation(n)]
    half = degree // 2
    return {
        order[i]: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d)
        for i in range(n)
    }
