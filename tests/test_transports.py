"""The party boundary: client halves in worker processes, reached by message bytes alone.

The ``process`` executor gives the same bytes as ``serial`` for the same seed; owners
that read their own files give the same model as the simulation of the same split;
and under secure aggregation every message the server half receives is either key
material, ciphertext, a masked vector that looks uniform in the ring, or a share.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import pytest
import torch
from scipy import stats

import privfl
from privfl.builtin.process_executor import ProcessExecutor
from privfl.builtin.secure_aggregation import SecAgg
from privfl.client_data import FolderData, PartitionedData, write_client_folders
from privfl.plugins import hookimpl
from privfl.secagg.messages import MaskedInput
from privfl.testing import ClearSum, tiny_federation

DP_DISTRIBUTED = {"dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip": 1.0}}


class RecordingProcessExecutor(ProcessExecutor):
    """The process executor, keeping every reply the server half receives."""

    name = "recording-process"
    received: ClassVar[list[tuple[int, privfl.Message]]] = []

    def send_and_receive(self, messages):
        replies = super().send_and_receive(messages)
        for client, reply in replies.items():
            if isinstance(reply, privfl.Message):
                type(self).received.append((client, reply))
        return replies


class RecordingPlugin:
    @hookimpl
    def privfl_register_executors(self):
        return [RecordingProcessExecutor]


def _run(executor: str, rounds: int = 2, **settings) -> privfl.Federation:
    with tiny_federation(executor=executor, **settings) as fed:
        fed.run(rounds)
    return fed


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"mechanisms": ["secagg+"], "num_clients": 6},
        {"mechanisms": ["dp", "secagg+"], "num_clients": 6, "options": DP_DISTRIBUTED},
        {"mechanisms": ["dp"], "options": {"dp": {"noise_multiplier": 0.5}}},
    ],
    ids=["fedavg", "secagg+", "dp-distributed+secagg+", "dp-central"],
)
@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_process_executor_gives_the_bytes_of_serial(settings):
    serial = _run("serial", **settings)
    process = _run("process", **settings)
    assert torch.equal(serial.params, process.params)
    assert [r.num_examples for r in serial.history] == [r.num_examples for r in process.history]
    assert serial.history[-1].metrics == process.history[-1].metrics


@pytest.mark.parametrize(
    "settings",
    [{}, {"options": DP_DISTRIBUTED, "dp": True}],
    ids=["secagg+", "dp-distributed+secagg+"],
)
@pytest.mark.parametrize("vectorize", [False, True], ids=["one-at-a-time", "stacked"])
@pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
def test_under_secagg_the_server_process_receives_no_plaintext_update(settings, vectorize):
    mechanisms = ["dp", "secagg+"] if settings.pop("dp", False) else ["secagg+"]
    RecordingProcessExecutor.received.clear()
    fed = tiny_federation(
        num_clients=8,
        executor=RecordingProcessExecutor(vectorize=vectorize),
        mechanisms=mechanisms,
        plugins=[RecordingPlugin()],
        **settings,
    )
    with fed:
        (record,) = fed.run(1)
    received = RecordingProcessExecutor.received
    assert record.values["secagg_contributors"] == 8
    assert {m.kind for _, m in received} == {"secure-reply"}
    assert all(set(m.tensors) == {"data"} for _, m in received)
    masked = [m for _, m in received if m.values["phase"] == "masked_input"]
    assert len(masked) == 8
    words = np.concatenate(
        [MaskedInput.from_bytes(m.tensors["data"].numpy().tobytes()).vector for m in masked]
    )
    # 8 x 20 ring words: a plaintext fixed-point update would fill the top bytes with
    # 0x00 or 0xFF; masked words are uniform, so every byte is.
    octets = words.view(np.uint8)
    counts = np.bincount(octets, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    top = (words >> (8 * words.itemsize - 8)).astype(np.int64)  # 32- or 64-bit ring
    assert len(set(top.tolist())) > 64
    # The sum the server learnt is exact: the same model as the in-process run.
    in_process = "vectorized" if vectorize else "serial"
    reference = tiny_federation(
        num_clients=8, mechanisms=mechanisms, executor=in_process, **settings
    )
    reference.run(1)
    assert torch.equal(reference.params, fed.params)


@pytest.mark.parametrize("vectorize", [False, True], ids=["one-at-a-time", "stacked"])
def test_under_secagg_with_shared_grid_codes_the_server_sees_only_masked_codes(vectorize):
    """8 clients' 8-bit codes are summed in an 11-bit ring: a plain code stays below 2^8,
    so its top three bits would be 0; masked values fill the whole ring."""
    RecordingProcessExecutor.received.clear()
    settings = {
        "num_clients": 8,
        "mechanisms": ["secagg+"],
        "compressor": "shared-grid",
        "options": {"shared-grid": {"bits": 8, "max_weight": 64}},
    }
    fed = tiny_federation(executor=RecordingProcessExecutor(vectorize=vectorize), **settings)
    with fed:
        (record,) = fed.run(1)
    received = RecordingProcessExecutor.received
    assert record.values["secagg_ring_bits"] == 11
    assert {m.kind for _, m in received} == {"secure-reply"}
    assert all(set(m.tensors) == {"data"} for _, m in received)
    masked = [
        MaskedInput.from_bytes(m.tensors["data"].numpy().tobytes())
        for _, m in received
        if m.values["phase"] == "masked_input"
    ]
    assert [m.ring_bits for m in masked] == [11] * 8
    words = np.concatenate([m.vector for m in masked]).astype(np.int64)
    assert int(words.max()) < 2**11
    assert set((words >> 8).tolist()) == set(range(8))  # every value of the top 3 bits
    reference = tiny_federation(executor="vectorized" if vectorize else "serial", **settings)
    reference.run(1)
    assert torch.equal(reference.params, fed.params)


def test_owners_reading_their_own_folders_equal_the_simulation(tmp_path):
    simulated = tiny_federation(num_clients=4, executor="serial")
    train = simulated.client_data.train
    partition = simulated.client_data.partition
    write_client_folders(tmp_path, train, partition)
    model = simulated.model
    owners = tiny_federation(
        model=model,
        train=None,
        partition=None,
        client_data=FolderData(tmp_path, 4),
        executor="process",
    )
    simulated.run(2)
    with owners:
        owners.run(2)
    assert torch.equal(simulated.params, owners.params)


class CrashingOwner(PartitionedData):
    """Simulated owners, of which client 1's process dies when it opens its data."""

    def __init__(self, train, partition) -> None:
        super().__init__(train, partition)
        self.server_pid = os.getpid()

    def load(self, client_id):
        if client_id == 1 and os.getpid() != self.server_pid:
            os._exit(3)
        return super().load(client_id)


def test_a_dead_worker_turns_its_clients_into_dropped_failures():
    simulated = tiny_federation(num_clients=4)
    data = CrashingOwner(simulated.client_data.train, simulated.client_data.partition)
    fed = tiny_federation(train=None, partition=None, client_data=data, executor="process")
    with fed:
        (record,) = fed.run(1)
    failed = record.values["failed"]
    assert set(failed.values()) == {"dropped"}
    assert "1" in failed
    assert len(failed) < 4  # the other worker's clients answered
    assert 0 < record.num_examples < 200
    assert torch.isfinite(fed.params).all()


class TamperingExecutor(privfl.Executor):
    """In-process clients; the reply of client 2 is rewritten on its way to the server."""

    name = "tampering"

    def __init__(self, tamper) -> None:
        self.tamper = tamper

    def start(self, app):
        self.host = privfl.ClientHost(app)

    def send_and_receive(self, messages):
        replies = {c: self.host.handle(c, m) for c, m in messages.items()}
        if 2 in replies:
            replies[2] = self.tamper(replies[2])
        return replies


def _with_values(message, **values):
    return privfl.Message(message.kind, {**message.values, **values}, message.tensors)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: _with_values(m, num_examples=0), "client 2 sent num_examples = 0"),
        (lambda m: _with_values(m, num_examples=True), "client 2 sent num_examples = True"),
        (lambda m: privfl.Message("update", m.values), "lacks tensor 'update'"),
        (lambda m: _with_values(m, train_loss="low"), "client 2 sent train_loss = 'low'"),
        (lambda m: privfl.Message("secure", m.values, m.tensors), "answered its task with"),
        (lambda m: _with_values(m, statistics=[1]), "statistics that are not a table"),
        (
            lambda m: privfl.Message("update", m.values, {"update": m.tensors["update"].double()}),
            "dtype torch.float64 differs from the model's torch.float32",
        ),
    ],
)
def test_a_malformed_reply_rejects_its_client_and_the_round_goes_on(tamper, reason):
    fed = tiny_federation(num_clients=4, executor=TamperingExecutor(tamper))
    reference = tiny_federation(num_clients=4, mechanisms=[ClearSum(keep={0, 1, 3})])
    (record,) = fed.run(1)
    reference.run(1)
    assert list(record.rejected) == [2]
    assert reason in record.rejected[2]
    assert record.num_examples == sum(len(fed.client_data.partition[c]) for c in (0, 1, 3))
    assert torch.allclose(fed.params, reference.params, atol=1e-6)


def test_under_secagg_a_client_with_another_layout_is_left_out_not_the_round():
    def other_layout(message):
        first = "statistic_names" in message.values
        return _with_values(message, statistic_names=["forged"]) if first else message

    fed = tiny_federation(
        num_clients=8,
        mechanisms=["secagg"],
        options={"secagg": {"tolerated_dropout": 0.3}},
        executor=TamperingExecutor(other_layout),
    )
    (record,) = fed.run(1)
    assert "reported statistics ['forged']" in record.rejected[2]
    assert record.values["secagg_contributors"] == 7
    assert 2 in record.values["secagg_dropped"]["advertise_keys"]


class _CrashingClient(privfl.SecureSumClient):
    """A SecAgg client whose process dies when asked for its masked input."""

    first_phase = "advertise_keys"

    def __init__(self, inner, server_pid: int) -> None:
        self.inner, self.server_pid = inner, server_pid

    def start(self, contribution):
        return self.inner.start(contribution)

    def step(self, phase, data):
        if phase == "masked_input" and os.getpid() != self.server_pid:
            os._exit(3)
        return self.inner.step(phase, data)

    @property
    def finished(self):
        return self.inner.finished


class CrashingSecAgg(SecAgg):
    """SecAgg whose clients 1, 3, 5 and 7 crash before sending their masked input."""

    name = "crashing-secagg"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.server_pid = os.getpid()

    def secure_client(self, *, client_id, config):
        inner = super().secure_client(client_id=client_id, config=config)
        return _CrashingClient(inner, self.server_pid) if client_id % 2 else inner


def test_clients_that_die_mid_protocol_are_dropouts_and_the_sum_survives():
    # Half the clients die: only against a semi-honest server can a round survive that.
    mechanism = CrashingSecAgg(tolerated_dropout=0.5, malicious_server=False)
    with tiny_federation(num_clients=8, executor="process", mechanisms=[mechanism]) as fed:
        (record,) = fed.run(1)
    # Sorted clients alternate between the two workers: clients 1, 3, 5, 7 share one,
    # which dies with client 1.
    assert record.values["secagg_dropped"] == {"masked_input": [1, 3, 5, 7]}
    assert record.values["secagg_contributors"] == 4
    reference = tiny_federation(num_clients=8, mechanisms=[ClearSum(keep={0, 2, 4, 6})])
    reference.run(1)
    assert torch.allclose(fed.params, reference.params, atol=1e-5)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            privfl.Message("train", {"seed": 1, "config": []}, {"params": torch.zeros(3)}),
            r"params of shape \(3,\)",
        ),
        (
            privfl.Message(
                "train",
                {"seed": 1, "config": []},
                {"params": torch.zeros(18), "config.7.x": torch.zeros(1)},
            ),
            "stray tensor 'config.7.x'",
        ),
        (privfl.Message("update", {}), "cannot answer a 'update' message"),
        (privfl.Message("secure", {"phase": "unmasking"}), "no secure sum under way"),
    ],
)
def test_a_client_half_refuses_malformed_server_messages(message, match):
    host = privfl.ClientHost(tiny_federation().client_app)
    with pytest.raises(privfl.MessageError, match=match):
        host.handle(0, message)
