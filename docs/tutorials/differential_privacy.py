"""Client-level differential privacy: the first federation with DP-FedAvg, and its epsilon.

Run it with ``python docs/tutorials/differential_privacy.py``; it trains on the MNIST
sample bundled with privfl in well under a minute. The docs build runs it and shows
its output.
"""

# [start-data]
import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import iid

mnist = load_bundled_mnist()
train = privfl.TensorPair(images_to_float(mnist.train_images), mnist.train_labels)
test = privfl.TensorPair(images_to_float(mnist.test_images), mnist.test_labels)
partition = iid(len(train), 500, seed=0)  # 500 clients of 20 examples
# [end-data]


# [start-federation]
def federation(noise_multiplier: float, target_epsilon: float | None = None):
    """The first federation, with DP-FedAvg and Poisson sampling of 10% of the clients."""
    torch.manual_seed(0)
    return privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=partition,
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler="poisson",
        mechanisms=["dp"],
        options={
            "poisson": {"sample_rate": 0.1},
            "dp": {
                "clip": 1.0,
                "noise_multiplier": noise_multiplier,
                "delta": 1e-5,
                "target_epsilon": target_epsilon,
                "secure_noise": True,  # a ChaCha20 keystream, not torch's generator
            },
        },
        server_optimizer="sgd",
        eval_every=5,
    )


# [end-federation]

# [start-run]
fed = federation(noise_multiplier=1.0)
for record in fed.run(rounds=20):
    if record.metrics:
        print(
            f"round {record.round:2d}  clients {len(record.clients):2d}  "
            f"accuracy {record.metrics['accuracy']:.4f}  epsilon {record.values['epsilon']:.3f}"
        )
# [end-run]

# [start-budget]
fed = federation(noise_multiplier=1.0, target_epsilon=3.0)
records = fed.run(rounds=100)
print(f"ran {len(records)} of 100 rounds; epsilon {records[-1].values['epsilon']:.3f}")
print(fed.stop_reason)
# [end-budget]
