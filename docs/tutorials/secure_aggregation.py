"""Secure aggregation: FedAvg where the server learns only the sum, with clients dropping out.

Run it with ``python docs/tutorials/secure_aggregation.py``; it trains on the MNIST
sample bundled with privfl in about a minute. The docs build runs it and shows its
output.
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
partition = iid(len(train), 100, seed=0)
# [end-data]


# [start-federation]
def federation(mechanisms: list[str]) -> privfl.Federation:
    """The first federation: 20 of 100 clients per round, FedAvg, optional mechanisms."""
    torch.manual_seed(0)
    return privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=partition,
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler="uniform",
        mechanisms=mechanisms,
        options={"uniform": {"clients_per_round": 20}, "secagg+": {"dropout": 0.3}},
        eval_every=10,
    )


# [end-federation]

# [start-run]
plain = federation([])
secure = federation(["secagg+"])
for record in secure.run(rounds=10):
    dropped = sum(len(ids) for ids in record.values["secagg_dropped"].values())
    print(
        f"round {record.round:2d}: {record.values['secagg_contributors']:2d} of "
        f"{len(record.clients)} clients in the sum, {dropped} dropped, "
        f"{record.values['secagg_kb_sent_per_client']:.0f} kB sent per client"
    )
plain.run(rounds=10)
print(f"accuracy with secure aggregation:    {secure.evaluations['plaintext']['accuracy']:.4f}")
print(f"accuracy without (nobody drops out): {plain.evaluations['plaintext']['accuracy']:.4f}")
# [end-run]
