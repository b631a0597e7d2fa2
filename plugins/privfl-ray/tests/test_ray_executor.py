"""The ``ray`` executor against the serial one, and what happens when actors fail.

Every test here shares one local Ray instance with 2 CPUs (see conftest.py).
"""

from __future__ import annotations

import sys
import time
import types

import pytest
import ray
import torch
from privfl_ray import RayExecutor
from ray.exceptions import RayActorError

import privfl
from privfl.builtin.secure_aggregation import SecAgg
from privfl.errors import ClientError
from privfl.testing import ClearSum, tiny_federation

pytestmark = pytest.mark.usefixtures("ray_instance")

DP_DISTRIBUTED = {"dp": {"mode": "distributed", "noise_multiplier": 0.5, "clip": 1.0}}


@pytest.fixture(scope="class")
def warm_executor():
    """One ray executor for several federations: its actors stay up between them."""
    executor = RayExecutor(actors=2)
    yield executor
    executor.close()


def _run(executor, rounds: int = 2, **settings) -> privfl.Federation:
    fed = tiny_federation(executor=executor, **settings)
    fed.run(rounds)
    return fed


def _history(fed: privfl.Federation) -> list[dict]:
    """The records as history.jsonl has them, less the wall-clock times."""
    return [
        {k: v for k, v in r.to_json().items() if not k.endswith("seconds")} for r in fed.history
    ]


class TestBitwiseEquality:
    """Each case is a new app for the same warm actors, so a stale host would show here."""

    @pytest.mark.parametrize(
        "settings",
        [
            {},
            {"mechanisms": ["secagg+"], "num_clients": 6},
            {"mechanisms": ["dp", "secagg+"], "num_clients": 6, "options": DP_DISTRIBUTED},
        ],
        ids=["fedavg", "secagg+", "dp-distributed+secagg+"],
    )
    @pytest.mark.filterwarnings("ignore::privfl.PrivacyWarning")
    def test_ray_executor_gives_the_bytes_and_history_of_serial(self, settings, warm_executor):
        serial = _run("serial", **settings)
        on_ray = _run(warm_executor, **settings)
        assert torch.equal(serial.params, on_ray.params)
        assert _history(serial) == _history(on_ray)

    def test_each_reply_is_reported_as_it_arrives(self, warm_executor):
        progress = Progress()
        _run(warm_executor, rounds=1, num_clients=5, plugins=[progress])
        assert progress.seen == [(1, done, 5) for done in range(1, 6)]


class TestStacked:
    """With ``vectorize``, each actor trains its clients of a round as one stack."""

    @pytest.mark.parametrize(
        "settings",
        [{}, {"mechanisms": ["secagg+"], "num_clients": 6}],
        ids=["fedavg", "secagg+"],
    )
    def test_stacked_actors_give_the_bytes_of_the_vectorized_executor(self, settings):
        executor = RayExecutor(actors=2, vectorize=True)
        try:
            on_ray = _run(executor, **settings)
        finally:
            executor.close()
        vectorized = _run("vectorized", **settings)
        assert torch.equal(vectorized.params, on_ray.params)
        assert _history(vectorized) == _history(on_ray)
        serial = _run("serial", **settings)  # stacking changes only float round-off
        assert torch.allclose(serial.params, on_ray.params, rtol=0, atol=1e-5)

    def test_an_actor_answers_its_clients_in_one_call_and_each_is_reported(self):
        executor = CountingRayExecutor(actors=2, vectorize=True)
        progress = Progress()
        try:
            _run(executor, rounds=1, num_clients=5, plugins=[progress])
        finally:
            executor.close()
        assert executor.calls == [2]  # one train exchange: one call per actor
        assert sorted(progress.seen) == [(1, done, 5) for done in range(1, 6)]


class CountingRayExecutor(RayExecutor):
    """The ray executor, counting the actor calls of each exchange."""

    name = "counting-ray"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.calls: list[int] = []

    def _collect(self, pending):
        self.calls.append(len(pending))
        return super()._collect(pending)


class Progress:
    """A plugin that keeps the round progress the protocol reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    @privfl.hookimpl
    def privfl_round_progress(self, round, done, total):
        self.seen.append((round, done, total))


def _is_dead(actor) -> bool:
    """Whether Ray reports ``actor`` dead (a live one refuses an empty message)."""
    try:
        ray.get(actor.handle.remote(0, b""), timeout=30)
    except RayActorError:
        return True
    except ClientError:
        return False
    raise AssertionError("an actor accepted an empty message")


def _dies(actor) -> bool:
    """Whether ``actor`` is dead within 30 seconds (Ray kills actors asynchronously)."""
    deadline = time.monotonic() + 30
    while not _is_dead(actor):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill(actor) -> None:
    """Kill ``actor`` and wait until Ray reports it dead, so no later call reaches it."""
    ray.kill(actor)
    assert _dies(actor), "the killed actor still answers"


class KillingRayExecutor(RayExecutor):
    """The ray executor, whose second actor is killed after the first exchange.

    Clients alternate between the two actors in id order, so clients 1, 3, 5 and 7
    lose their secure-aggregation state after sending their first message. Every
    exchange's replies are kept.
    """

    name = "killing-ray"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.exchanges: list[dict] = []

    def send_and_receive(self, messages):
        replies = super().send_and_receive(messages)
        if not self.exchanges:
            _kill(self._pool[1])
        self.exchanges.append(replies)
        return replies


def test_an_actor_killed_mid_round_drops_its_clients_and_is_replaced_next_round():
    executor = KillingRayExecutor(actors=2)
    # Half the clients die: only against a semi-honest server can a round survive that.
    mechanism = SecAgg(tolerated_dropout=0.5, malicious_server=False)
    with tiny_federation(num_clients=8, executor=executor, mechanisms=[mechanism]) as fed:
        (first,) = fed.run(1)
        after_first = fed.params.clone()
        exchanges = len(executor.exchanges)
        (second,) = fed.run(2)
    after_kill = executor.exchanges[1]
    assert {c: r for c, r in after_kill.items() if c % 2} == dict.fromkeys(
        [1, 3, 5, 7], privfl.Failure("dropped")
    )
    assert all(isinstance(r, privfl.Message) for c, r in after_kill.items() if c % 2 == 0)
    assert first.values["secagg_dropped"] == {"share_keys": [1, 3, 5, 7]}
    assert first.values["secagg_contributors"] == 4
    reference = tiny_federation(num_clients=8, mechanisms=[ClearSum(keep={0, 2, 4, 6})])
    reference.run(1)
    assert torch.allclose(after_first, reference.params, atol=1e-5)
    # The next round runs on a new actor: every client answers every exchange.
    assert all(
        isinstance(r, privfl.Message) for e in executor.exchanges[exchanges:] for r in e.values()
    )
    assert second.values["secagg_contributors"] == 8


def test_actors_that_do_not_answer_in_time_are_timed_out_and_replaced():
    executor = RayExecutor(actors=2, timeout=1e-3)  # less than an actor takes to start
    with tiny_federation(num_clients=4, executor=executor) as fed:
        (late,) = fed.run(1)
        executor.timeout = 60.0
        (on_time,) = fed.run(2)
    assert late.values["failed"] == dict.fromkeys(["0", "1", "2", "3"], "timed out")
    assert late.num_examples == 0
    assert "failed" not in on_time.values
    assert on_time.num_examples == 200


def test_a_client_error_in_an_actor_is_raised_in_the_server_naming_the_client():
    executor = RayExecutor(actors=1)
    executor.start(tiny_federation().client_app)
    try:
        with pytest.raises(ClientError, match=r"client 3 failed in its Ray actor: .*no secure sum"):
            executor.send_and_receive({3: privfl.Message("secure", {"phase": "unmasking"})})
    finally:
        executor.close()


def test_an_app_the_actors_cannot_load_is_an_error_not_dropped_clients(monkeypatch):
    # A model class whose module exists only in the server's process, as a plugin
    # installed on the driver but not on the nodes would be.
    module = types.ModuleType("module_only_in_the_server")

    class Model(torch.nn.Linear):
        pass

    Model.__module__, Model.__qualname__ = module.__name__, "Model"
    module.Model = Model
    monkeypatch.setitem(sys.modules, module.__name__, module)
    fed = tiny_federation(model=Model(8, 2), executor=RayExecutor(actors=1))
    with pytest.raises(ClientError, match=r"could not build the client half .*installed on"):
        fed.run(1)
    fed.close()


def test_close_kills_the_actors_and_leaves_an_instance_it_did_not_start():
    executor = RayExecutor(actors=2)
    fed = tiny_federation(executor=executor)
    fed.run(1)
    actors = list(executor._pool)
    fed.close()
    assert ray.is_initialized()
    assert all(_dies(actor) for actor in actors)
    fed.run(2)  # a later run starts new actors
    fed.close()
    assert len(fed.history) == 2
