"""Encrypted evaluation: test a federated model on images that nobody else gets to see.

Run it with ``python docs/tutorials/encrypted_evaluation.py``; it needs no download and
finishes in well under half a minute on a laptop CPU. The docs build runs it and shows
its output.

The first part uses plain Python integers to show what a secret share is; the second
trains the 2NN with privfl and evaluates it with :mod:`privfl.smpc`, where the model
owner's weights and the data owner's test images are both secret-shared.
"""

# [start-imports]
import random
import time

import torch

import privfl
from privfl.algorithms.models import TwoNN
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import iid
from privfl.smpc import (
    OpeningKind,
    Session,
    secure_count_correct,
    secure_predict,
    share_labels,
    share_model,
)

# [end-imports]

# [start-clock]
print(f"on a clock: 9 + 5 = {(9 + 5) % 12}")

RING = 2**64
secret = 42
rng = random.Random(0)  # a seeded demo generator; privfl draws shares from ChaCha20
share_0 = rng.randrange(RING)  # uniform in [0, 2^64)
share_1 = (secret - share_0) % RING  # whatever makes the two sum to the secret
print(f"share 0: {share_0:>20}")
print(f"share 1: {share_1:>20}")
print(f"(share 0 + share 1) mod 2^64 = {(share_0 + share_1) % RING}")
# [end-clock]


# [start-uniform]
def share_1_of(value: int) -> int:
    """Split ``value`` afresh and return the second share alone."""
    return (value - rng.randrange(RING)) % RING


def eighths(value: int, samples: int = 80_000) -> list[float]:
    """How often the second share lands in each eighth of [0, 2^64)."""
    counts = [0] * 8
    for _ in range(samples):
        counts[share_1_of(value) >> 61] += 1
    return [count / samples for count in counts]


for value in (0, 42, 10**18):
    row = " ".join(f"{fraction:.3f}" for fraction in eighths(value))
    print(f"secret {value:>19}: share 1 falls in each eighth {row}")
# [end-uniform]

# [start-fixed-point]
SCALE = 2**16  # 16 fractional bits


def encode(x: float) -> int:
    return round(x * SCALE) % RING  # negative numbers wrap to the top of the ring


def decode(r: int) -> float:
    signed = r - RING if r >= 2**63 else r  # the top half of the ring reads as negative
    return signed / SCALE


a, b = encode(1.5), encode(-0.25)
product = (a * b) % RING  # carries 2 x 16 fractional bits now
signed_product = product - RING if product >= 2**63 else product
print(f"encode(1.5) = {a}, encode(-0.25) = {b}")
print(f"decode(encode(1.5) * encode(-0.25) >> 16) = {decode((signed_product >> 16) % RING)}")
print(f"encode(0.1) = {encode(0.1)}, which decodes to {decode(encode(0.1)):.7f}")
# [end-fixed-point]

# [start-train]
mnist = load_bundled_mnist()
train = privfl.TensorPair(images_to_float(mnist.train_images), mnist.train_labels)
test = privfl.TensorPair(images_to_float(mnist.test_images), mnist.test_labels)
torch.manual_seed(0)
fed = privfl.Federation(
    model=TwoNN(),
    train=train,
    test=test,
    partition=iid(len(train), 100, seed=0),
    training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
    options={"uniform": {"clients_per_round": 10}},
    evaluators=(),  # no per-round evaluation: we test once, below
    seed=0,
)
fed.run(rounds=20)
model = fed.model.eval()
with torch.no_grad():
    plain_predictions = model(test.inputs).argmax(dim=1)
plain_accuracy = (plain_predictions == test.targets).double().mean().item()
print(f"trained the 2NN for 20 rounds; plaintext test accuracy {plain_accuracy:.4f}")
# [end-train]

# [start-share]
session = Session()  # fresh keys from os.urandom
shared_model = share_model(session, model)  # the model owner's move
model_bytes = session.traffic.input_bytes
shared_images = session.share_float(test.inputs)  # the data owner's move
image_bytes = session.traffic.input_bytes - model_bytes
print(f"party 0 holds {tuple(shared_images.shares[0].shape)} int64 shares of the images")
first_pixel = shared_images.shares[:, 0, 0, 0, 0]  # both parties' shares of one pixel
print(f"shares of the first pixel: {first_pixel.tolist()}")
print(f"their sum {first_pixel.sum().item()} decodes to {first_pixel.sum().item() / 2**16:.4f},")
print(f"the pixel is {test.inputs[0, 0, 0, 0].item():.4f}")
# [end-share]

# [start-predict]
start = time.perf_counter()
predictions, times = session.run_two_phase(secure_predict, shared_model, shared_images)
wall = time.perf_counter() - start
# [end-predict]

# [start-results]
n = len(test)
encrypted_accuracy = (predictions == test.targets).double().mean().item()
agree = (predictions == plain_predictions).sum().item()
traffic = session.traffic
print(f"encrypted accuracy {encrypted_accuracy:.4f} on {n} test images")
print(f"plaintext accuracy {plain_accuracy:.4f}")
print(f"same prediction as plaintext for {agree} of {n} images")
offline_ms, online_ms = 1e3 * times.offline_s / n, 1e3 * times.online_s / n
print(f"offline {offline_ms:.3f} ms/image, online {online_ms:.3f} ms/image ({wall:.1f} s in all)")
print(f"online {traffic.online_bytes / n / 1e3:.1f} kB/image in {traffic.rounds} rounds,")
print(f"offline {traffic.offline_bytes / n / 1e3:.1f} kB/image from the dealer,")
print(
    f"input {image_bytes / n / 1e3:.1f} kB/image, and {model_bytes / 1e6:.1f} MB once for the model"
)
# [end-results]

# [start-log]
print(f"{'opened kind':<14} {'openings':>8} {'values':>10}  what the values look like")
for kind in OpeningKind:
    entries = [entry for entry in session.log.entries if entry.kind is kind]
    if not entries:
        continue
    values = torch.cat([entry.values.reshape(-1) for entry in entries])
    if kind is OpeningKind.BIT_MASKED:
        looks = f"random bits, mean {values.double().mean().item():.3f}"
    elif kind is OpeningKind.OUTPUT:
        looks = f"the predictions, first {values[:8].tolist()}"
    else:
        small = (values.abs() < 2**40).double().mean().item()
        looks = f"uniform words: {small:.1e} below 2^40 (uniform: 2^-23 = {2**-23:.1e})"
    print(f"{kind.value:<14} {len(entries):>8} {len(values):>10}  {looks}")
print("opened kinds:", ", ".join(sorted(kind.value for kind in session.log.kinds())))
# [end-log]

# [start-count]
session = Session()
shared_model = share_model(session, model)
shared_images = session.share_float(test.inputs[:500])
shared_labels = share_labels(session, test.targets[:500], num_classes=10)
correct, _ = session.run_two_phase(secure_count_correct, shared_model, shared_images, shared_labels)
outputs = [entry for entry in session.log.entries if entry.kind is OpeningKind.OUTPUT]
plain_correct = (plain_predictions[:500] == test.targets[:500]).sum().item()
print(f"accuracy only: {correct.item()} of 500 correct (plaintext: {plain_correct})")
print(f"outputs opened: {len(outputs)}, of shape {outputs[0].shape}: a single number")
# [end-count]
