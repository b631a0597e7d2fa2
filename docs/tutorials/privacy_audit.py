"""Privacy audit: check DP-FedAvg's epsilon with canary clients, and catch a bug.

Run it with ``python docs/tutorials/privacy_audit.py``; it trains two short audit runs
on the MNIST sample bundled with privfl, in under a minute. The docs build runs it and
shows its output.
"""

# [start-data]
import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.audit import audit
from privfl.builtin.dp_mechanism import DPFedAvg
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import iid

mnist = load_bundled_mnist()
train = privfl.TensorPair(images_to_float(mnist.train_images), mnist.train_labels)
test = privfl.TensorPair(images_to_float(mnist.test_images), mnist.test_labels)
federation = {
    "train": train,
    "test": test,
    "partition": iid(len(train), 250, seed=0),  # 250 clients of 40 examples
    "training": privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
    "sampler": "poisson",
    "options": {"poisson": {"sample_rate": 0.2}},
    "eval_every": 10,
}
# [end-data]


# [start-audit]
def show(title: str, report) -> None:
    """Print an audit's numbers on a few lines."""
    print(title)
    print(f"  claimed epsilon       {report.claimed_epsilon:6.3f}  (delta {report.delta:g})")
    print(f"  provable lower bound  {report.lower_bound.epsilon:6.3f}  (95% confidence)")
    estimates = {"all-iterates": report.all_iterates, "final-model": report.final_model}
    for name, estimate in estimates.items():
        print(
            f"  {name + ' estimate':21} {estimate.epsilon:6.3f}  "
            f"(interval {estimate.low:.3f} to {estimate.high:.3f})"
        )
    print(f"  claim refuted: {report.refuted}")


torch.manual_seed(0)
dp = DPFedAvg(clip=1.0, noise_multiplier=2.0, delta=1e-5, secure_noise=True)
report = audit(rounds=10, canaries=400, model=TwoNN(), mechanisms=[dp], **federation)
show("DP-FedAvg, z = 2:", report)
# [end-audit]


# [start-bug]
class ForgetsTheNoise(DPFedAvg):
    """A bug to catch: accounts DP-FedAvg's epsilon but returns the sum without noise."""

    def server_step(self, aggregate, **round_values):
        _, values = super().server_step(aggregate, **round_values)  # accounts the round
        return aggregate, values  # ... but drops the noise


torch.manual_seed(0)
buggy = ForgetsTheNoise(clip=1.0, noise_multiplier=2.0, delta=1e-5, secure_noise=True)
report = audit(rounds=10, canaries=400, model=TwoNN(), mechanisms=[buggy], **federation)
show("The same claim, without the noise:", report)
# [end-bug]
