"""Your first federation: FedAvg with the 2NN on the MNIST sample bundled with privfl.

Run it with ``python docs/tutorials/first_federation.py``; it needs no download and
finishes in a few seconds on a laptop CPU. The docs build runs it and shows its output.
"""

# [start-imports]
import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.builtin.samplers import UniformSampler
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import iid
from privfl.seeding import derive_seed

# [end-imports]

# [start-data]
SEED = 0
mnist = load_bundled_mnist()
train = privfl.TensorPair(images_to_float(mnist.train_images), mnist.train_labels)
test = privfl.TensorPair(images_to_float(mnist.test_images), mnist.test_labels)
partition = iid(len(train), 100, seed=derive_seed(SEED, "partition"))
print(f"{len(train)} training examples among {len(partition)} clients, {len(test)} to test")
# [end-data]

# [start-model]
torch.manual_seed(derive_seed(SEED, "model"))
model = TwoNN()
# [end-model]

# [start-federation]
fed = privfl.Federation(
    model=model,
    train=train,
    test=test,
    partition=partition,
    training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
    sampler=UniformSampler(clients_per_round=10),
    seed=SEED,
)
# [end-federation]

# [start-run]
for record in fed.run(rounds=15):
    accuracy = record.metrics["accuracy"]
    print(f"round {record.round:2d}  clients {len(record.clients)}  accuracy {accuracy:.4f}")
# [end-run]
