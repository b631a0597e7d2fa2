"""The tests' Flower app: privfl's tiny federation, with its clients on SuperNodes.

``build`` is the tiny federation of :func:`privfl.testing.tiny_federation`, with
each client's data from its owner's folder instead of the tiny dataset's rows; the
run config chooses the mechanisms (``mechanisms = "dp,secagg+"``). The ServerApp and the
ClientApp live in modules of their own, as in Flower's app template: Flower starts
a ClientApp process for every message, and one that does not import privfl (and
so torch) starts in a fraction of the time, so privfl is imported inside ``build``.
"""

from __future__ import annotations

OPTIONS = {
    "secagg+": {"tolerated_dropout": 0.4},  # the tests' dropout: 2 clients of 6
    "dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip": 1.0},
}
"""The options of the mechanisms a run config may choose."""


def build(*, client_data, executor, run_config):
    from privfl.testing import tiny_federation

    mechanisms = [m for m in str(run_config.get("mechanisms", "")).split(",") if m]
    return tiny_federation(
        train=None,
        partition=None,
        client_data=client_data,
        executor=executor,
        mechanisms=mechanisms,
        options=OPTIONS,
    )
