"""Built-in components on their own: samplers, FedAvg, server SGD, executor, evaluator."""

from __future__ import annotations

import pytest
import torch

import privfl
from privfl.algorithms.aggregation import fedavg
from privfl.algorithms.models import CNN, TwoNN, count_parameters
from privfl.builtin.evaluators import PlaintextEvaluator
from privfl.builtin.executors import training_threads
from privfl.builtin.samplers import AllSampler, PoissonSampler, UniformSampler
from privfl.builtin.server_optimizers import ServerSGD
from privfl.client import LocalTraining
from privfl.client_data import PartitionedData
from privfl.client_runtime import ClientApp
from privfl.components import TensorPair
from privfl.vectorized import SINGLE_THREAD_FLOPS


def test_uniform_sampler_draws_distinct_sorted_ids():
    sampler = UniformSampler(clients_per_round=7)
    seen = set()
    for seed in range(50):
        ids = sampler.sample(num_clients=20, generator=torch.Generator().manual_seed(seed))
        assert len(ids) == 7
        assert ids.tolist() == sorted(set(ids.tolist()))
        seen.update(ids.tolist())
    assert seen == set(range(20))


def test_poisson_sampler_rate_matches():
    sampler = PoissonSampler(sample_rate=0.1)
    generator = torch.Generator().manual_seed(0)
    sizes = [len(sampler.sample(num_clients=1000, generator=generator)) for _ in range(200)]
    mean = sum(sizes) / len(sizes)
    # Binomial(1000, 0.1): sd of the mean of 200 draws is about 0.67.
    assert abs(mean - 100) < 3
    assert len(set(sizes)) > 5
    assert sampler.expected_clients(1000) == pytest.approx(100)


def test_all_sampler_takes_everyone():
    ids = AllSampler().sample(num_clients=5, generator=torch.Generator())
    assert ids.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("factory", "key"),
    [
        (lambda: UniformSampler(clients_per_round=0), "clients_per_round"),
        (lambda: PoissonSampler(sample_rate=0.0), "sample_rate"),
        (lambda: PoissonSampler(sample_rate=1.5), "sample_rate"),
        (lambda: ServerSGD(server_lr=0), "server_lr"),
        (lambda: PlaintextEvaluator(batch_size=0), "batch_size"),
    ],
)
def test_component_options_are_checked(factory, key):
    with pytest.raises(privfl.ConfigError, match=key):
        factory()


def test_uniform_sampler_refuses_more_than_all_clients():
    with pytest.raises(privfl.ConfigError, match=r"clients_per_round = 11 .* at most .* \(10\)"):
        UniformSampler(clients_per_round=11).expected_clients(10)


def test_fedavg_by_hand():
    updates = torch.tensor([[1.0, 0.0], [4.0, 2.0], [-2.0, 6.0]])
    weights = torch.tensor([1.0, 2.0, 1.0])
    # (1*[1,0] + 2*[4,2] + 1*[-2,6]) / 4 = [7, 10] / 4
    assert fedavg(updates, weights).tolist() == [1.75, 2.5]


def test_fedavg_refuses_bad_shapes_and_zero_weights():
    with pytest.raises(ValueError, match="expected updates"):
        fedavg(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        fedavg(torch.zeros(2, 3), torch.zeros(2))


def test_server_sgd_step():
    step = ServerSGD(server_lr=0.5).step(torch.tensor([1.0, 2.0]), torch.tensor([2.0, -2.0]))
    assert step.tolist() == [2.0, 1.0]


def test_paper_parameter_counts():
    assert count_parameters(TwoNN()) == 199_210
    assert count_parameters(CNN()) == 1_663_370


def test_thread_choice_follows_the_work():
    train = TensorPair(torch.zeros(20, 1, 28, 28), torch.zeros(20, dtype=torch.long))

    def work(model, batch_size):
        return ClientApp(
            model=model,
            loss=torch.nn.functional.cross_entropy,
            training=LocalTraining(batch_size=batch_size),
            data=PartitionedData(train, [torch.arange(20)]),
        )

    assert training_threads(work(TwoNN(), 10)) == 1
    # The CNN's forward pass on 10 images costs about 2 x 4.6e6 x 10 FLOPs.
    assert SINGLE_THREAD_FLOPS < 2 * 4_000_000 * 10
    assert training_threads(work(CNN(), 10)) == torch.get_num_threads()


def test_plaintext_evaluator_matches_a_direct_computation():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs, targets = torch.randn(25, 4), torch.randint(0, 3, (25,))
    result = PlaintextEvaluator(batch_size=7).evaluate(
        model=model,
        test=TensorPair(inputs, targets),
        loss=torch.nn.functional.cross_entropy,
        metrics={"accuracy": privfl.accuracy},
    )
    with torch.no_grad():
        outputs = model(inputs)
    assert result["accuracy"] == pytest.approx(float((outputs.argmax(1) == targets).float().mean()))
    expected = float(torch.nn.functional.cross_entropy(outputs, targets))
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
