"""The federation, described as ``privfl run`` would read it from a config file.

``privfl run --model 2nn --sampler all --dp --dp-mode distributed --secagg secagg+``
with these options: each round both owners train the 2NN on their own digits, clip
their update, add their share of the Gaussian noise (drawn from the operating
system's cryptographic generator, as a deployment needs), and mask it; the server
only learns the noisy sum.
"""

from __future__ import annotations

CONFIG = {
    "model": "2nn",
    "sampler": "all",
    "batch_size": 20,
    "lr": 0.05,
    "mechanisms": ["dp", "secagg+"],
    "dp": {"mode": "distributed", "noise_multiplier": 0.01, "clip": 4.0, "secure_noise": True},
    "secagg+": {"tolerated_dropout": 0.0},
    "seed": 0,
}
"""privfl's configuration keys and component tables (``privfl run --config``)."""


def build(*, client_data, executor, run_config):
    from privfl_flower import federation_from_config  # imports privfl: only when building

    return federation_from_config(
        CONFIG, client_data=client_data, executor=executor, run_config=run_config
    )
