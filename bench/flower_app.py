"""Flower 1.42's simulation on privfl's whole-run workload, for ``versus_flower.py``.

Run by the Python of a separate venv holding ``flwr[simulation]==1.42.0`` (which pins
Ray 2.55) and privfl (for the model class and the MNIST loaders, so both sides train
the same network on the same tensors). Workload, as in McMahan et al. 2017: the 2NN on
MNIST, 100 IID clients (``privfl.data.partition.iid(..., 100, seed=0)``), 10 sampled per
round, one local epoch of plain SGD at batch size 10 and learning rate 0.1, FedAvg
weighted by example counts, evaluation once at the end on the test set.

It uses the message API Flower 1.42 recommends (a ``ServerApp`` whose main drives
``flwr.serverapp.strategy.FedAvg``, a ``ClientApp`` with a ``train`` handler) run by
``flwr.simulation.run_simulation`` on the Ray backend. Flower gets its fastest fair
setup: one CPU per client (so as many clients run at once as there are cores), one
torch thread per client, no federated evaluation, server-side evaluation only after the
last round, and training data read once per Ray worker and kept for every later round.
Flower 1.42 marks ``run_simulation`` deprecated in favour of ``flwr run``, which also
starts a detached local SuperLink: more processes and start-up, so this is the lighter
of the two.

Prints one JSON line: test accuracy, rounds aggregated and seconds inside the script.

Usage: ``/work/venvs/flower/bin/python bench/flower_app.py --data-dir ../shared/data/mnist``
"""

from __future__ import annotations

import os

# Flower's telemetry and Ray's usage stats would try the network, which is not there.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse
import functools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from privfl.algorithms.models import TwoNN
from privfl.components import TensorPair
from privfl.data.mnist import MNIST, images_to_float, load_bundled_mnist, load_mnist
from privfl.data.partition import iid

sys.path.insert(0, str(Path(__file__).parent))
from centralized_floor import evaluate

NUM_CLIENTS = 100
CLIENTS_PER_ROUND = 10

client_app = ClientApp()


def _mnist(data_dir: str) -> MNIST:
    return load_mnist(data_dir) if data_dir else load_bundled_mnist()


@functools.cache
def _client_data(data_dir: str) -> tuple[TensorPair, list[np.ndarray]]:
    """The training set and its 100 IID parts, read once per Ray worker process."""
    data = _mnist(data_dir)
    train = TensorPair(images_to_float(data.train_images), data.train_labels)
    return train, iid(len(train), NUM_CLIENTS, seed=0)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of minibatch SGD on this node's part; reply with the new weights."""
    torch.set_num_threads(1)
    config = msg.content["config"]
    dataset, parts = _client_data(str(config["data-dir"]))
    part_id = int(context.node_config["partition-id"])
    indices = torch.from_numpy(parts[part_id])
    inputs, targets = dataset.inputs[indices], dataset.targets[indices]
    model = TwoNN()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
    batch_size = int(config["batch-size"])
    generator = torch.Generator().manual_seed(int(config["server-round"]) * NUM_CLIENTS + part_id)
    order = torch.randperm(len(indices), generator=generator)
    losses = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    metrics = MetricRecord({"train-loss": sum(losses) / len(losses), "num-examples": len(order)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def run(data_dir: str, rounds: int, lr: float, batch_size: int) -> dict[str, float]:
    """Run the simulation; return test accuracy and the number of rounds aggregated."""
    outcome: dict[str, float] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(0)  # FedAvg samples nodes with the random module
        torch.manual_seed(0)
        model = TwoNN()
        strategy = FedAvg(fraction_train=CLIENTS_PER_ROUND / NUM_CLIENTS, fraction_evaluate=0.0)
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"data-dir": data_dir, "lr": lr, "batch-size": batch_size}),
        )
        model.load_state_dict(result.arrays.to_torch_state_dict())
        data = _mnist(data_dir)
        test = TensorPair(images_to_float(data.test_images), data.test_labels)
        outcome["accuracy"] = evaluate(model, test)
        outcome["rounds"] = len(result.train_metrics_clientapp)

    with tempfile.TemporaryDirectory(prefix="flwr-ray-") as ray_dir:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=NUM_CLIENTS,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                # A fresh local Ray instance on the loopback address, in a private
                # folder, so that no other Ray on this machine is joined.
                "init_args": {
                    "address": "local",
                    "_node_ip_address": "127.0.0.1",
                    "_temp_dir": ray_dir,
                },
            },
        )
    return outcome


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="", help="MNIST folder; default: the bundled sample")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    started = time.perf_counter()
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else ""
    # Ray pickles the ClientApp for every message. Taken from the importable module
    # ``flower_app`` rather than ``__main__``, its functions travel by reference, so
    # each worker imports this module once and ``_client_data``'s cache lasts.
    import flower_app

    outcome = flower_app.run(data_dir, args.rounds, args.lr, args.batch_size)
    outcome["seconds"] = time.perf_counter() - started
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    cli()
