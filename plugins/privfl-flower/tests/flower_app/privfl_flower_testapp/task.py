"""The tests' Flower app: the 2NN on a few hundred MNIST digits, its clients on SuperNodes.

``build`` makes the same federation on the ServerApp's side (with the
``flower-grid`` executor and no data), on each node's host (with the node's folder)
and in the tests' in-process reference run (with ``serial`` and one folder holding
every client): McMahan et al.'s 2NN (784-200-200-10), every client in every round,
one epoch in batches of 20, seed 0. The run config chooses the rest, as privfl's
command line would:

``mechanisms``
    ``""`` (FedAvg), ``"dp"`` (DP-FedAvg: clip, then the server adds the noise) or
    ``"dp,secagg+"`` with ``dp-mode = "distributed"`` (``privfl run --dp --dp-mode
    distributed --secagg secagg+``: each client adds its share of the noise and the
    server only learns the secure sum).
``aggregator``
    ``"fedavg"`` or ``"trimmed-mean"`` (Yin et al. 2018, a fifth cut at each end).

The ServerApp and the ClientApp live in modules of their own, as in Flower's app
template: Flower starts a ClientApp process for every message, and one that does
not import privfl (and so torch) starts in a fraction of the time, so privfl is
imported inside ``build``.
"""

from __future__ import annotations

NUM_CLIENTS = 6
"""Two on each of the tests' three SuperNodes."""

OPTIONS = {
    "secagg+": {"tolerated_dropout": 0.4},  # the tests' dropout: 2 clients of 6
    "dp": {"noise_multiplier": 0.1, "clip": 1.0},  # noise norm 7x the clip: no warning
    "trimmed-mean": {"trim_fraction": 0.2},
}
"""The options of the components a run config may choose."""


def build(*, client_data, executor, run_config):
    import torch

    from privfl import Federation
    from privfl.algorithms.models import TwoNN
    from privfl.client import LocalTraining

    mechanisms = [m for m in str(run_config.get("mechanisms", "")).split(",") if m]
    options = {**OPTIONS, "dp": {**OPTIONS["dp"], "mode": run_config.get("dp-mode", "central")}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TwoNN()
    return Federation(
        model=model,
        client_data=client_data,
        executor=executor,
        training=LocalTraining(epochs=1, batch_size=20, lr=0.05),
        sampler="all",
        aggregator=str(run_config.get("aggregator", "fedavg")),
        mechanisms=mechanisms,
        options=options,
        seed=0,
    )
