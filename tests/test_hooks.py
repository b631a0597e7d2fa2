"""One test per hook, named after it: each shows a plugin's implementation taking effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import privfl
from privfl import hookimpl
from privfl.app.config import make_config
from privfl.app.runner import build_federation
from privfl.records import RoundRecord
from privfl.testing import ClearSum, make_plugin_manager, tiny_dataset, tiny_federation


class CountingSampler(privfl.ClientSampler):
    name = "first-two"

    def expected_clients(self, num_clients: int) -> float:
        return 2.0

    def sample(self, *, num_clients: int, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(2)


def test_hook_register_samplers():
    class Plugin:
        @hookimpl
        def privfl_register_samplers(self):
            return [CountingSampler]

    fed = tiny_federation(plugins=[Plugin()], sampler="first-two")
    (record,) = fed.run(1)
    assert record.clients == [0, 1]


def test_hook_register_aggregators():
    class Zero(privfl.Aggregator):
        name = "zero"

        def aggregate(self, updates, weights):
            return torch.zeros(updates.shape[1])

    class Plugin:
        @hookimpl
        def privfl_register_aggregators(self):
            return [Zero]

    fed = tiny_federation(plugins=[Plugin()], aggregator="zero")
    before = fed.params.clone()
    fed.run(2)
    assert torch.equal(fed.params, before)


def test_hook_register_server_optimizers():
    class Half(privfl.ServerOptimizer):
        name = "half"

        def step(self, params, update):
            return params + 0.5 * update

    class Plugin:
        @hookimpl
        def privfl_register_server_optimizers(self):
            return [Half]

    full = tiny_federation()
    half = tiny_federation(plugins=[Plugin()], server_optimizer="half")
    start = full.params.clone()
    full.run(1)
    half.run(1)
    assert torch.allclose(half.params - start, 0.5 * (full.params - start), atol=1e-6)


def test_hook_register_mechanisms():
    calls = []

    class Clip(privfl.PrivacyMechanism):
        name = "clip-to-zero"

        def client_step(self, update, *, config, generator, statistics):
            calls.append("client")
            return torch.zeros_like(update)

        def server_step(self, aggregate, *, expected_clients, contributors, statistics, generator):
            calls.append(("server", expected_clients, contributors))
            return aggregate, {}

    class Plugin:
        @hookimpl
        def privfl_register_mechanisms(self):
            return [Clip]

    fed = tiny_federation(plugins=[Plugin()], mechanisms=["clip-to-zero"])
    before = fed.params.clone()
    fed.run(1)
    assert calls == ["client"] * 4 + [("server", 4.0, 4)]
    assert torch.equal(fed.params, before)


@pytest.mark.filterwarnings("ignore:client-level DP over:privfl.PrivacyWarning")
@pytest.mark.filterwarnings("ignore:DP noise will drown:privfl.UtilityWarning")
def test_hook_register_accountants():
    class Counting(privfl.Accountant):
        name = "counting"

        def __init__(self):
            self.rounds = 0

        def compose(self, *, sampling, noise_multiplier, rounds=1):
            self.rounds += rounds

        def epsilon(self, delta):
            return float(self.rounds)

        def epsilon_after(self, *, sampling, noise_multiplier, rounds, delta):
            return float(self.rounds + rounds)

    class Plugin:
        @hookimpl
        def privfl_register_accountants(self):
            return [Counting]

    fed = tiny_federation(
        plugins=[Plugin()],
        mechanisms=["dp"],
        options={"dp": {"accountant": "counting", "secure_noise": True}},
    )
    records = fed.run(3)
    assert [r.values["epsilon"] for r in records] == [1.0, 2.0, 3.0]


def test_hook_register_evaluators():
    class Constant(privfl.Evaluator):
        name = "constant"

        def evaluate(self, *, model, test, loss, metrics):
            return {"constant": 42.0}

    class Plugin:
        @hookimpl
        def privfl_register_evaluators(self):
            return [Constant]

    fed = tiny_federation(plugins=[Plugin()], evaluators=["plaintext", "constant"])
    (record,) = fed.run(1)
    assert record.metrics["constant"] == 42.0
    assert "accuracy" in record.metrics


def test_hook_register_executors():
    class Reversed(privfl.Executor):
        name = "reversed"

        def start(self, app):
            self.host = privfl.ClientHost(app)

        def send_and_receive(self, messages):
            replies = {c: self.host.handle(c, messages[c]) for c in reversed(list(messages))}
            return {c: replies[c] for c in messages}

    class Plugin:
        @hookimpl
        def privfl_register_executors(self):
            return [Reversed]

    serial = tiny_federation(executor="serial")
    backwards = tiny_federation(plugins=[Plugin()], executor="reversed")
    serial.run(2)
    backwards.run(2)
    # Seeds come from (seed, round, client), so running clients in another order is
    # bitwise the same.
    assert torch.equal(serial.params, backwards.params)


def _tiny_config(**overrides):
    values = {
        "dataset": "blobs",
        "model": "tiny-linear",
        "partition": "halves",
        "clients": 2,
        "sampler": "all",
        "rounds": 1,
        "lr": 0.1,
    }
    values.update(overrides)
    return make_config(values)


class Blobs(privfl.DatasetSource):
    name = "blobs"

    def load(self):
        train, test = tiny_dataset()
        return privfl.Datasets(train=train, test=test, source="made in memory")


class Linear(torch.nn.Linear):
    name = "tiny-linear"

    def __init__(self):
        super().__init__(8, 2)


class Halves(privfl.Partitioner):
    name = "halves"

    def split(self, targets, num_clients, *, seed):
        return [np.asarray(a, dtype=np.int64) for a in np.array_split(np.arange(len(targets)), 2)]


class ConfigPlugin:
    @hookimpl
    def privfl_register_datasets(self):
        return [Blobs]

    @hookimpl
    def privfl_register_models(self):
        return [Linear]

    @hookimpl
    def privfl_register_partitioners(self):
        return [Halves]


def test_hook_register_datasets():
    fed, data = build_federation(_tiny_config(), plugins=make_plugin_manager([ConfigPlugin()]))
    assert data.source == "made in memory"
    assert len(fed.client_data.train) == 200


def test_hook_register_models():
    fed, _ = build_federation(_tiny_config(), plugins=make_plugin_manager([ConfigPlugin()]))
    assert isinstance(fed.model, Linear)
    assert fed.params.numel() == 8 * 2 + 2


def test_hook_register_partitioners():
    fed, _ = build_federation(_tiny_config(), plugins=make_plugin_manager([ConfigPlugin()]))
    assert [p.tolist() for p in fed.client_data.partition] == [
        list(range(100)),
        list(range(100, 200)),
    ]


def test_hook_configure():
    class Refuse:
        @hookimpl
        def privfl_configure(self, federation):
            if federation.aggregator.name == "fedavg" and federation.num_clients < 5:
                raise privfl.ConfigError("clients", federation.num_clients, "at least 5")

    with pytest.raises(privfl.ConfigError, match="clients = 4 is not allowed: at least 5"):
        tiny_federation(plugins=[Refuse()])


def test_hook_session_start():
    seen = []

    class Plugin:
        @hookimpl
        def privfl_session_start(self, start_round, total_rounds):
            seen.append((start_round, total_rounds))

    fed = tiny_federation(plugins=[Plugin()])
    fed.run(2)
    fed.run(5)
    assert seen == [(1, 2), (3, 5)]


def test_hook_round_protocol():
    class SkipTraining:
        @hookimpl
        def privfl_round_protocol(self, round):
            return RoundRecord(round=round, clients=[], num_examples=0, train_loss=0.0)

    fed = tiny_federation(plugins=[SkipTraining()])
    before = fed.params.clone()
    records = fed.run(3)
    assert [r.round for r in records] == [1, 2, 3]
    assert torch.equal(fed.params, before)


def test_hook_update_received():
    class RejectOdd:
        @hookimpl
        def privfl_update_received(self, result):
            return "odd client" if result.client_id % 2 else None

    fed = tiny_federation(plugins=[RejectOdd()])
    (record,) = fed.run(1)
    assert record.rejected == {1: "odd client", 3: "odd client"}
    assert record.num_examples == sum(len(fed.client_data.partition[c]) for c in (0, 2))


def test_hook_round_finish():
    class AddValue:
        @hookimpl(tryfirst=True)
        def privfl_round_finish(self, record):
            record.values["twice_round"] = 2 * record.round

    fed = tiny_federation(plugins=[AddValue()])
    records = fed.run(2)
    assert [r.to_json()["twice_round"] for r in records] == [2, 4]


def test_hook_should_stop():
    class StopAtTwo:
        @hookimpl
        def privfl_should_stop(self, record):
            return "enough" if record.round == 2 else None

    finished = []

    class Watch:
        @hookimpl
        def privfl_session_finish(self, status, stop_reason):
            finished.append((status, stop_reason))

    fed = tiny_federation(plugins=[StopAtTwo(), Watch()])
    records = fed.run(10)
    assert [r.round for r in records] == [1, 2]
    assert finished == [("stopped", "enough")]


def test_hook_session_finish():
    finished = []

    class Boom:
        @hookimpl
        def privfl_round_finish(self, record):
            if record.round == 2:
                raise RuntimeError("boom")

        @hookimpl
        def privfl_session_finish(self, status, stop_reason):
            finished.append(status)

    fed = tiny_federation(plugins=[Boom()])
    with pytest.raises(RuntimeError, match="boom"):
        fed.run(3)
    assert finished == ["failed"]
    # Round 2 was recorded before its round_finish failed, so the next run goes on at 3.
    assert [r.round for r in fed.run(3)] == [3]
    assert finished == ["failed", "complete"]


def test_hook_register_attacks():
    class Zeroing(privfl.Attack):
        name = "zeroing"

        def poison_updates(self, malicious, benign, *, generator):
            return torch.zeros_like(malicious)

    class Plugin:
        @hookimpl
        def privfl_register_attacks(self):
            return [Zeroing]

    fed = tiny_federation(plugins=[Plugin()], attack="zeroing", malicious_fraction=0.5)
    honest = set(range(4)) - fed.malicious
    reference = tiny_federation(mechanisms=[ClearSum(keep=honest)])
    assert len(fed.malicious) == 2
    before = fed.params.clone()
    (record,) = fed.run(1)
    reference.run(1)
    assert sorted(record.values["malicious"]) == sorted(fed.malicious)
    # Two of four updates are zero: the FedAvg step is the honest clients' weighted
    # mean times their share of the examples.
    sizes = {c: len(p) for c, p in enumerate(fed.client_data.partition)}
    share = sum(sizes[c] for c in honest) / sum(sizes.values())
    expected = before + share * (reference.params - before)
    torch.testing.assert_close(fed.params, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("executor", ["serial", "vectorized", "process"])
def test_hook_round_progress(executor):
    """Each client's reply counts once, whichever executor delivers it."""
    seen = []

    class Plugin:
        @hookimpl
        def privfl_round_progress(self, federation, round, done, total):
            seen.append((round, done, total))

    with tiny_federation(plugins=[Plugin()], num_clients=3, executor=executor) as fed:
        fed.run(2)
    assert seen == [(r, d, 3) for r in (1, 2) for d in (1, 2, 3)]
    assert fed.executor.on_reply is None  # set for the exchange only
