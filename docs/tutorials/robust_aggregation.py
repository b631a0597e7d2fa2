"""Robust aggregation: non-IID clients, an attack, and the aggregators that survive it.

Run it with ``python docs/tutorials/robust_aggregation.py``; it trains on the MNIST
sample bundled with privfl in well under a minute. The docs build runs it and shows
its output.
"""

# [start-data]
import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import dirichlet

mnist = load_bundled_mnist()
train = privfl.TensorPair(images_to_float(mnist.train_images), mnist.train_labels)
test = privfl.TensorPair(images_to_float(mnist.test_images), mnist.test_labels)
partition = dirichlet(train.targets.numpy(), 20, alpha=1.0, seed=0)
sizes = sorted(len(p) for p in partition)
print(f"20 non-IID clients holding {sizes[0]} to {sizes[-1]} examples")
# [end-data]


# [start-federation]
def final_accuracy(aggregator: str, attack: str | None, rounds: int = 8) -> float:
    """Train from the same seed with one aggregator and, optionally, an attack."""
    torch.manual_seed(0)
    federation = privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=partition,
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.05),
        sampler="all",
        aggregator=aggregator,
        attack=attack,
        malicious_fraction=0.2,  # 4 of the 20 clients
        options={
            "gaussian": {"sigma": 1.0},
            "trimmed-mean": {"trim_fraction": 0.2},
            "krum": {"byzantine": 4},
        },
        eval_every=rounds,
    )
    return federation.run(rounds)[-1].metrics["accuracy"]


# [end-federation]

# [start-compare]
print(f"{'aggregator':<14}{'no attack':>11}{'gaussian':>11}")
for aggregator in ("fedavg", "trimmed-mean", "median", "krum"):
    clean = final_accuracy(aggregator, attack=None)
    attacked = final_accuracy(aggregator, attack="gaussian")
    print(f"{aggregator:<14}{clean:>11.4f}{attacked:>11.4f}")
# [end-compare]
