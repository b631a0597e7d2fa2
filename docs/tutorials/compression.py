"""Compressed updates: trading uplink bytes for accuracy.

Run it with ``python docs/tutorials/compression.py``; it trains on the MNIST sample
bundled with privfl in well under a minute. The docs build runs it and shows its
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
partition = iid(len(train), 20, seed=0)
# [end-data]


# [start-federation]
def train_with(
    compressor: str | list[str] | None,
    options: dict,
    rounds: int = 10,
    downlink_bits: int | None = None,
) -> privfl.RoundRecord:
    """Train from the same seed with one compressor (``options``: its table) or a stack
    (a table per stage); return the last round's record."""
    torch.manual_seed(0)
    federation = privfl.Federation(
        model=TwoNN(),
        train=train,
        test=test,
        partition=partition,
        training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
        sampler="uniform",
        compressor=compressor,
        downlink_bits=downlink_bits,
        options={
            "uniform": {"clients_per_round": 5},
            **({compressor: options} if isinstance(compressor, str) else options),
        },
        eval_every=rounds,
    )
    return federation.run(rounds)[-1]


# [end-federation]

# [start-compare]
float32_bytes = 4 * sum(p.numel() for p in TwoNN().parameters())
print(f"{'compressor':<42}{'bytes/client':>13}{'ratio':>8}{'accuracy':>10}")
for name, options in [
    (None, {}),
    ("qsgd", {"bits": 2, "rotation": True, "scale": "max"}),
    ("random-mask", {"fraction": 0.25}),
    ("topk", {"fraction": 0.05, "value_bits": 8}),
    ("low-rank", {"rank": 0.1}),
]:
    record = train_with(name, options)
    sent = record.values.get("uplink_bytes", float32_bytes)
    label = " ".join([name or "none", *(f"{k}={v}" for k, v in options.items())])
    ratio, accuracy = float32_bytes / sent, record.metrics["accuracy"]
    print(f"{label:<42}{sent:>13,.0f}{ratio:>7.1f}x{accuracy:>10.4f}")
# [end-compare]

# [start-stack]
rotated = {"rotation": True, "scale": "max"}
stacks: list[tuple[list[str], dict[str, dict]]] = [
    (["random-mask", "qsgd"], {"random-mask": {"fraction": 0.25}, "qsgd": {"bits": 2, **rotated}}),
    (["topk", "qsgd"], {"topk": {"fraction": 0.05}, "qsgd": {"bits": 4, **rotated}}),
]
for stack, tables in stacks:
    record = train_with(stack, tables)
    sent = record.values["uplink_bytes"]
    fraction, bits = tables[stack[0]]["fraction"], tables["qsgd"]["bits"]
    label = f"{','.join(stack)} fraction={fraction} bits={bits}"
    ratio, accuracy = float32_bytes / sent, record.metrics["accuracy"]
    print(f"{label:<42}{sent:>13,.0f}{ratio:>7.1f}x{accuracy:>10.4f}")
# [end-stack]

# [start-downlink]
record = train_with(None, {}, downlink_bits=8)
received = record.values["downlink_bytes"]
print(
    f"downlink 8 bits: {received:,} bytes to each client, {float32_bytes / received:.1f}x "
    f"fewer than float32, accuracy {record.metrics['accuracy']:.4f}"
)
# [end-downlink]

# [start-dp]
try:
    privfl.Federation(
        model=TwoNN(),
        train=train,
        partition=partition,
        mechanisms=["dp"],
        compressor="qsgd",
        options={"dp": {"secure_noise": True}},
    )
except privfl.ConfigError as error:
    print(f"refused: {error}")
# [end-dp]
