"""The centralized floor: a plain PyTorch training loop with no federation around it.

It performs the same sample-steps as a FedAvg round (the same number of batch-``B``
SGD steps on the same model and data tensors) with nothing else: no clients, no
parameter copies, no aggregation. ``bench/fedavg_overhead.py`` divides privfl's times
by this loop's. Run as a script, it is also the whole-run floor: start the
interpreter, import torch, load MNIST, train for the steps of ``--rounds`` FedAvg
rounds, evaluate once.
"""

from __future__ import annotations

import os

# Both sides get what `privfl run` gets (privfl sets these when imported before torch):
# idle OpenMP threads spin briefly, then sleep; large tensors use huge pages.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import time

import torch

from privfl.algorithms.models import CNN, TwoNN
from privfl.components import TensorPair
from privfl.data.mnist import images_to_float, load_bundled_mnist, load_mnist

MODELS = {"2nn": TwoNN, "cnn": CNN}


def load(data_dir: str | None) -> tuple[TensorPair, TensorPair]:
    """MNIST as float tensors (the same preprocessing privfl uses)."""
    data = load_mnist(data_dir) if data_dir else load_bundled_mnist()
    return (
        TensorPair(images_to_float(data.train_images), data.train_labels),
        TensorPair(images_to_float(data.test_images), data.test_labels),
    )


def train_steps(
    model: torch.nn.Module, train: TensorPair, steps: int, batch_size: int, lr: float, seed: int
) -> None:
    """``steps`` SGD steps on random batches of ``batch_size``: the floor's whole work."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.randperm(len(train), generator=generator)
    position = 0
    for _ in range(steps):
        if position + batch_size > len(order):
            order = torch.randperm(len(train), generator=generator)
            position = 0
        batch = order[position : position + batch_size]
        position += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(
            model(train.inputs.index_select(0, batch)), train.targets.index_select(0, batch)
        )
        loss.backward()
        optimizer.step()


def evaluate(model: torch.nn.Module, test: TensorPair) -> float:
    """Test accuracy in batches of 1,000."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 1000):
            outputs = model(test.inputs[start : start + 1000])
            correct += int((outputs.argmax(1) == test.targets[start : start + 1000]).sum())
    return correct / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--model", choices=sorted(MODELS), default="2nn")
    parser.add_argument("--steps", type=int, required=True, help="total SGD steps")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test = load(args.data_dir)
    torch.manual_seed(0)
    model = MODELS[args.model]()
    train_steps(model, train, args.steps, args.batch_size, args.lr, seed=0)
    torch.set_num_threads(default_threads)
    accuracy = evaluate(model, test)
    print(f"accuracy {accuracy:.4f} seconds {time.perf_counter() - started:.2f}")


if __name__ == "__main__":
    main()
