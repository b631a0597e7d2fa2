"""Downlink compression (Caldas et al. 2018): clients train from the model they decode,
the server keeps its exact model, and the bytes each client receives are counted."""

from __future__ import annotations

import warnings

import pytest
import torch

import privfl
from privfl import ConfigError
from privfl.algorithms.bit_coding import packed_size
from privfl.algorithms.models import TwoNN
from privfl.app.config import make_config
from privfl.app.runner import build_federation
from privfl.builtin.executors import SerialExecutor
from privfl.builtin.process_executor import ProcessExecutor
from privfl.client import LocalTrainer
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import iid
from privfl.downlink import DownlinkDecoder, DownlinkEncoder
from privfl.errors import PrivacyWarning, UtilityWarning
from privfl.messages import Message, MessageError, tensor_bytes
from privfl.testing import tiny_federation
from privfl.vectorized import StackedTrainer

DIM = 18
"""The tiny federation's parameters: 8 features and a bias, 2 classes."""
ENCODED = {bits: 4 + packed_size(64, bits) for bits in (2, 4, 8)}
"""qsgd's bytes with a rotation: a float32 scale and a code per coordinate of the
rotated vector, padded to 64."""


class Recording(SerialExecutor):
    """The serial executor, keeping every message sent and every reply."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[dict[int, Message], dict[int, Message]]] = []

    def send_and_receive(self, messages):
        replies = super().send_and_receive(messages)
        self.exchanges.append((dict(messages), dict(replies)))
        return replies


def _decoded(message: Message) -> torch.Tensor:
    """The model a client decodes from its ``train`` message, decoded afresh."""
    data = tensor_bytes(message.tensors["encoded_params"])
    return DownlinkDecoder(DIM).decode(data, message.values["downlink"], "the server")


def test_serial_vectorized_and_process_executors_train_from_the_same_decoded_model():
    def final(executor) -> torch.Tensor:
        with tiny_federation(executor=executor, downlink_bits=4) as fed:
            records = fed.run(2)
        assert all(r.values["downlink_bytes"] == ENCODED[4] and not r.rejected for r in records)
        return fed.params

    serial = final("serial")
    assert torch.equal(final(ProcessExecutor(workers=1)), serial)  # the same bytes
    torch.testing.assert_close(final("vectorized"), serial)  # stacked: to round-off
    float32 = tiny_federation()
    float32.run(2)
    assert not torch.equal(float32.params, serial)  # the downlink changed the run


def test_each_client_trains_from_exactly_the_decoded_model_and_the_server_adds_the_mean():
    executor = Recording()
    fed = tiny_federation(executor=executor, downlink_bits=4, aggregator="fedavg")
    start = fed.params.clone()
    (record,) = fed.run(1)
    ((messages, replies),) = executor.exchanges
    decoded = _decoded(messages[0])
    assert not torch.equal(decoded, start), "4-bit codes should not hold the model exactly"
    trainer = LocalTrainer(fed.model, fed.loss, fed.training)
    updates, weights = [], []
    for client, message in messages.items():
        assert torch.equal(_decoded(message), decoded)  # one model for the round
        data = fed.client_data.load(client)
        expected, _ = trainer.train(data, decoded, seed=message.values["seed"])
        assert torch.equal(replies[client].tensors["update"], expected)
        updates.append(expected)
        weights.append(len(data))
    w = torch.tensor(weights, dtype=torch.float32)
    mean = (torch.stack(updates) * w[:, None]).sum(dim=0) / w.sum()
    torch.testing.assert_close(fed.params, start + mean, rtol=0, atol=1e-6)
    assert record.values["downlink_bytes"] == ENCODED[4]


def test_stacked_training_starts_every_client_from_the_decoded_model(monkeypatch):
    starts: list[torch.Tensor] = []
    train = StackedTrainer.train

    def spy(self, data, global_params, seeds, **kwargs):
        starts.append(global_params.clone())
        return train(self, data, global_params, seeds, **kwargs)

    monkeypatch.setattr(StackedTrainer, "train", spy)
    executor = Recording()
    executor.stack = True  # the vectorized executor's stacked training, recorded
    fed = tiny_federation(executor=executor, downlink_bits=4)
    start = fed.params.clone()
    fed.run(1)
    ((messages, replies),) = executor.exchanges
    assert starts, "the clients did not train stacked"
    decoded = _decoded(messages[0])
    assert all(torch.equal(s, decoded) for s in starts)
    assert not torch.equal(decoded, start)
    trainer = LocalTrainer(fed.model, fed.loss, fed.training)
    for client, message in messages.items():  # stacked equals one at a time to round-off
        alone, _ = trainer.train(fed.client_data.load(client), decoded, seed=message.values["seed"])
        torch.testing.assert_close(replies[client].tensors["update"], alone)


@pytest.mark.parametrize("bits", [2, 8])
def test_the_bytes_counted_are_those_of_the_model_that_crossed(bits):
    executor = Recording()
    records = tiny_federation(executor=executor, downlink_bits=bits).run(2)
    for record, (messages, _) in zip(records, executor.exchanges, strict=True):
        sizes = {len(tensor_bytes(m.tensors["encoded_params"])) for m in messages.values()}
        assert sizes == {ENCODED[bits]} == {record.values["downlink_bytes"]}
        assert all("params" not in m.tensors for m in messages.values())
    float32 = tiny_federation().run(1)[0]
    assert float32.values["downlink_bytes"] == 4 * DIM


def test_the_encoding_is_the_same_for_every_client_and_a_function_of_seed_and_round():
    params = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    one, again = (DownlinkEncoder(8, dimension=1000, seed=5) for _ in range(2))
    assert one.encode(params, round=3) == again.encode(params, round=3)
    assert one.encode(params, round=3)[1] != one.encode(params, round=4)[1]
    assert (
        one.encode(params, round=3)[1]
        != DownlinkEncoder(8, dimension=1000, seed=6).encode(params, round=3)[1]
    )
    config, data = one.encode(params, round=3)
    decoded = DownlinkDecoder(1000).decode(data, config, "the server")
    # Suresh et al.'s quantization after a rotation: each coordinate of the rotated
    # vector is off by less than one level, scale / 127, and the rotation is orthogonal.
    scale = float(torch.frombuffer(bytearray(data[:4]), dtype=torch.float32))
    assert 0 < float(torch.linalg.vector_norm(decoded - params)) < scale / 127 * 1024**0.5


def test_a_run_resumed_from_its_checkpoint_ends_with_the_same_bytes(tmp_path):
    def federation():
        return tiny_federation(downlink_bits=4)

    straight = federation()
    straight.run(4)
    first = federation()
    first.run(2, run_dir=tmp_path / "run")
    resumed = federation()
    resumed.resume(tmp_path / "run")
    resumed.run(4, run_dir=tmp_path / "run")
    assert torch.equal(resumed.params, straight.params)
    other = tiny_federation(downlink_bits=8)
    with pytest.raises(ConfigError, match="downlink_bits"):
        other.resume(tmp_path / "run")


def test_downlink_compression_works_with_dp_and_secure_aggregation():
    options = {"dp": {"clip": 1.0, "noise_multiplier": 0.5}}
    with warnings.catch_warnings():  # DP on 8 clients: privfl warns of its utility
        warnings.simplefilter("ignore", PrivacyWarning)
        warnings.simplefilter("ignore", UtilityWarning)
        plain = tiny_federation(mechanisms=["dp"], options=options, num_clients=8)
        compressed = tiny_federation(
            mechanisms=["dp"], options=options, num_clients=8, downlink_bits=8
        )
        # the accountant sees the same clipped and noised updates
        assert plain.run(2)[-1].values["epsilon"] == compressed.run(2)[-1].values["epsilon"]
        secure = tiny_federation(mechanisms=["secagg"], downlink_bits=4)
        (record,) = secure.run(1)
    clear = tiny_federation(downlink_bits=4)
    clear.run(1)
    assert record.values["secagg_contributors"] == 4
    assert record.values["downlink_bytes"] == ENCODED[4]
    # the secure sum of the same updates, trained from the same decoded model
    torch.testing.assert_close(secure.params, clear.params, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def mnist_sample():
    mnist = load_bundled_mnist()
    train = privfl.TensorPair(images_to_float(mnist.train_images), mnist.train_labels)
    test = privfl.TensorPair(images_to_float(mnist.test_images), mnist.test_labels)
    return train, test


def test_eight_bit_downlink_on_mnist_keeps_the_accuracy_of_float32(mnist_sample):
    train, test = mnist_sample

    def final(downlink_bits: int | None) -> privfl.RoundRecord:
        torch.manual_seed(0)
        fed = privfl.Federation(
            model=TwoNN(),
            train=train,
            test=test,
            partition=iid(len(train), 20, seed=0),
            training=privfl.LocalTraining(epochs=1, batch_size=10, lr=0.1),
            options={"uniform": {"clients_per_round": 5}},
            downlink_bits=downlink_bits,
            eval_every=5,
        )
        return fed.run(5)[-1]

    exact, compressed = final(None), final(8)
    assert exact.values["downlink_bytes"] == 4 * 199_210
    assert compressed.values["downlink_bytes"] == 4 + 199_232  # 4x fewer
    assert exact.metrics["accuracy"] > 0.8
    assert abs(compressed.metrics["accuracy"] - exact.metrics["accuracy"]) < 0.02


@pytest.mark.parametrize("bits", [1, 17, -2, True, 8.0, "8"])
def test_bad_downlink_bits_are_refused_naming_the_key(bits):
    with pytest.raises(ConfigError, match="from 2 to 16") as caught:
        tiny_federation(downlink_bits=bits)
    assert caught.value.key == "downlink_bits"
    with pytest.raises(ConfigError) as caught:
        make_config({"downlink_bits": bits})
    assert caught.value.key == "downlink_bits"


def test_float32_is_zero_or_unset_and_the_key_reaches_the_federation():
    assert make_config({}).downlink_bits is None
    assert tiny_federation(downlink_bits=0).downlink is None
    config = make_config({"model": "2nn", "clients": 20, "downlink_bits": 6})
    assert "downlink_bits = 6" in config.to_toml()
    federation, _ = build_federation(config)
    assert federation.downlink is not None
    assert federation.downlink.bits == 6
    assert federation.settings["downlink_bits"] == 6  # a resume must match it


def test_a_model_that_does_not_decode_is_a_message_error_naming_the_sender():
    config, data = DownlinkEncoder(4, dimension=100, seed=0).encode(torch.ones(100), round=1)
    decoder = DownlinkDecoder(100)
    with pytest.raises(MessageError, match=r"the server.*bytes, not the"):
        decoder.decode(data[:-1], config, "the server")
    with pytest.raises(MessageError, match="bits"):
        decoder.decode(data, {**config, "bits": 1}, "the server")
    with pytest.raises(MessageError, match="rotation_seed"):
        decoder.decode(data, {"bits": 4}, "the server")
    with pytest.raises(MessageError, match="not a table"):
        decoder.decode(data, [4], "the server")
    assert decoder.decode(data, config, "the server") is decoder.decode(data, config, "s")
