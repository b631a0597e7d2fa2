"""The Python API: FedAvg arithmetic, determinism, portability of client work, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import privfl
from privfl.client import LocalTraining, flatten_gradients, flatten_parameters
from privfl.client_runtime import ClientHost
from privfl.messages import Message, decode, encode
from privfl.seeding import derive_seed, torch_generator
from privfl.testing import ClearSum, tiny_dataset, tiny_federation


def _train_by_hand(model, inputs, targets, order, lr, batch_size):
    """Plain PyTorch SGD over ``order`` in batches: the reference for local training."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
        optimizer.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_one_round_is_fedavg_of_locally_trained_models():
    fed = tiny_federation(num_clients=3)
    start = fed.params.clone()
    model0 = copy.deepcopy(fed.model)
    fed.run(1)
    locals_, sizes = [], []
    for client in range(3):
        task_seed = derive_seed(0, "client", 1, client)
        shuffle = torch_generator(task_seed, "shuffle")
        train = fed.client_data.train
        indices = fed.client_data.partition[client]
        order = indices[torch.randperm(len(indices), generator=shuffle)]
        locals_.append(_train_by_hand(model0, train.inputs, train.targets, order, 0.1, 10))
        sizes.append(len(indices))
    weights = torch.tensor(sizes, dtype=torch.float32)
    expected = (weights[:, None] * torch.stack(locals_)).sum(0) / weights.sum()
    assert not torch.allclose(fed.params, start)
    torch.testing.assert_close(fed.params, expected, rtol=0, atol=1e-6)


def test_training_learns_the_tiny_task():
    fed = tiny_federation()
    records = fed.run(5)
    assert records[0].metrics["accuracy"] < records[-1].metrics["accuracy"]
    assert records[-1].metrics["accuracy"] > 0.9


def test_same_seed_gives_bitwise_identical_parameters():
    a, b, c = tiny_federation(), tiny_federation(), tiny_federation(seed=1)
    for fed in (a, b, c):
        fed.run(3, checkpoint_every=1)
    assert torch.equal(a.params, b.params)
    assert not torch.equal(a.params, c.params)


def test_client_halves_answer_the_same_in_any_order_and_after_encoding():
    fed = tiny_federation(num_clients=4)

    def task(client):
        values = {"round": 1, "seed": 100 + client, "config": []}
        return Message("train", values, {"params": fed.params})

    forward = [ClientHost(fed.client_app).handle(c, task(c)) for c in range(4)]
    fresh = ClientHost(fed.client_app)
    backward = [
        decode(encode(fresh.handle(c, decode(encode(task(c)), sender="the server"))), sender="c")
        for c in reversed(range(4))
    ][::-1]
    for client, (one, other) in enumerate(zip(forward, backward, strict=True)):
        assert one.kind == other.kind == "update"
        assert torch.equal(one.tensors["update"], other.tensors["update"])
        assert one.values == other.values
        assert one.values["num_examples"] == len(fed.client_data.partition[client])


def test_flatten_parameters_makes_views():
    model = torch.nn.Linear(3, 2)
    flat = flatten_parameters(model)
    assert flat.shape == (8,)
    flat.zero_()
    assert all(bool((p == 0).all()) for p in model.parameters())
    with torch.no_grad():
        model.bias.add_(1.0)
    assert flat[-2:].tolist() == [1.0, 1.0]


def test_models_with_batchnorm_are_refused():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(privfl.ConfigError, match="BatchNorm"):
        tiny_federation(model=model)


def test_rejected_nan_update_leaves_round_going():
    class NaNClientZero(privfl.PrivacyMechanism):
        name = "nan-zero"

        def client_step(self, update, *, config, generator, statistics):
            return update * float("nan") if float(update.abs().sum()) > 0 else update

    fed = tiny_federation(mechanisms=[NaNClientZero()])
    (record,) = fed.run(1)
    assert record.rejected == {c: "update holds NaN or infinite values" for c in range(4)}
    assert record.num_examples == 0
    assert torch.isfinite(fed.params).all()


def test_wrong_shape_update_is_rejected():
    class Truncate(privfl.PrivacyMechanism):
        name = "truncate"

        def client_step(self, update, *, config, generator, statistics):
            return update[:-1]

    fed = tiny_federation(mechanisms=[Truncate()])
    (record,) = fed.run(1)
    assert set(record.rejected) == {0, 1, 2, 3}
    assert "differs from the model's (18,)" in record.rejected[0]


def test_poisson_round_with_no_clients_keeps_the_model():
    fed = tiny_federation(sampler="poisson", options={"poisson": {"sample_rate": 1e-9}})
    before = fed.params.clone()
    (record,) = fed.run(1)
    assert record.clients == []
    assert torch.equal(fed.params, before)
    assert record.to_json()["train_loss"] is None


def test_evaluation_follows_eval_every_and_last_round():
    fed = tiny_federation(eval_every=2)
    records = fed.run(5)
    assert [bool(r.metrics) for r in records] == [False, True, False, True, True]


def test_state_dict_round_trip_continues_identically():
    straight = tiny_federation()
    straight.run(4)
    first = tiny_federation()
    first.run(2)
    resumed = tiny_federation()
    resumed.load_state_dict(first.state_dict())
    resumed.run(4)
    assert torch.equal(straight.params, resumed.params)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"partition": []}, "partition = '\\[\\]'"),
        ({"partition": [np.array([0, 1]), np.array([500])]}, "partition\\[1\\]"),
        ({"partition": [np.array([], dtype=np.int64)]}, "at least one example"),
        ({"eval_every": 0}, "eval_every = 0"),
        ({"sampler": "uniform", "options": {"uniform": {"clients_per_round": 9}}}, "at most"),
        ({"aggregator": 3}, "aggregator = 3"),
        ({"train": (torch.zeros(3), torch.zeros(4))}, "differ in length"),
    ],
)
def test_bad_arguments_fail_before_training(overrides, message):
    with pytest.raises((privfl.ConfigError, ValueError), match=message):
        tiny_federation(**overrides)


@pytest.mark.parametrize(
    ("settings", "key"),
    [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": -1.0}, "lr")],
)
def test_local_training_settings_are_checked(settings, key):
    with pytest.raises(privfl.ConfigError, match=f"^{key} = "):
        LocalTraining(**settings)


def test_run_needs_at_least_one_round():
    with pytest.raises(privfl.ConfigError, match="rounds = 0"):
        tiny_federation().run(0)


def test_tiny_dataset_is_learnable_and_balanced():
    train, test = tiny_dataset()
    assert 0.3 < float(train.targets.float().mean()) < 0.7
    assert len(train) == len(test) == 200


def test_huge_but_finite_update_is_accepted():
    class Huge(privfl.PrivacyMechanism):
        name = "huge"

        def client_step(self, update, *, config, generator, statistics):
            return torch.full_like(update, 3e38)  # the sum overflows; every value is finite

    fed = tiny_federation(mechanisms=[Huge()])
    (record,) = fed.run(1)
    assert record.rejected == {}


def test_flat_gradients_hold_the_whole_gradient():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    flatten_parameters(model)
    flat_grad = flatten_gradients(model)
    inputs, targets = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert float(flat_grad.abs().sum()) > 0
    assert torch.equal(flat_grad, expected)


def test_replaced_gradients_are_detected_not_ignored():
    def drop_gradients(module, args):
        for p in module.parameters():
            p.grad = None

    model = torch.nn.Linear(8, 2)
    model.register_forward_pre_hook(drop_gradients)  # the client halves' copies keep it
    fed = tiny_federation(model=model, executor="serial")
    with pytest.raises(RuntimeError, match="not accumulated into the flat gradient"):
        fed.run(1)


def test_fedavg_from_sums_equals_fedavg_on_stacked_updates():
    stacked = tiny_federation(num_clients=6)
    summed = tiny_federation(num_clients=6, mechanisms=[ClearSum()])
    stacked.run(2)
    summed.run(2)
    assert torch.allclose(stacked.params, summed.params, atol=1e-6)
    assert not torch.equal(stacked.params, tiny_federation(num_clients=6).params)


def test_a_sum_mechanism_with_a_robust_aggregator_is_refused_at_configuration():
    with pytest.raises(privfl.ConfigError, match="reveals only their sum"):
        tiny_federation(mechanisms=[ClearSum()], aggregator="median")


def test_two_secure_sum_mechanisms_are_refused():
    with pytest.raises(privfl.ConfigError, match="at most one secure-aggregation"):
        tiny_federation(mechanisms=[ClearSum(), ClearSum()])


def test_aborted_round_keeps_the_model_and_says_why():
    class Abort(ClearSum):
        def secure_sum(self, *, round, client_ids, first, exchange):
            raise privfl.RoundAborted("only 1 of 4 clients left, threshold 3")

    fed = tiny_federation(mechanisms=[Abort()])
    before = fed.params.clone()
    (record,) = fed.run(1)
    assert torch.equal(fed.params, before)
    assert record.values["aborted"] == "only 1 of 4 clients left, threshold 3"
