"""Server optimizers: hand-computed steps, pure functions, checkpointable state."""

from __future__ import annotations

import math

import pytest
import torch

import privfl
from privfl.algorithms import server_optimization as so
from privfl.app.checkpoint import load_checkpoint, save_checkpoint
from privfl.builtin.server_optimizers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from privfl.plugins import get_plugin_manager
from privfl.testing import tiny_federation

# Two coordinates: the first gets updates 2 then 1, the second none (it must not move).
PARAMS = torch.tensor([0.0, 1.0], dtype=torch.float64)
UPDATES = [
    torch.tensor([2.0, 0.0], dtype=torch.float64),
    torch.tensor([1.0, 0.0], dtype=torch.float64),
]
ADAPTIVE = {"server_lr": 0.1, "beta1": 0.5, "beta2": 0.5, "tau": 1.0}


def _two_steps(optimizer) -> list[float]:
    params = PARAMS
    firsts = []
    for update in UPDATES:
        params = optimizer.step(params, update)
        firsts.append(params[0].item())
        assert params[1].item() == 1.0
    return firsts


def test_fedavgm_two_steps_by_hand():
    # lr 0.5, momentum 0.5: v1 = 2, p1 = 0 + 0.5 * 2 = 1
    #                       v2 = 0.5 * 2 + 1 = 2, p2 = 1 + 0.5 * 2 = 2
    assert _two_steps(FedAvgM(server_lr=0.5, momentum=0.5)) == [1.0, 2.0]


def test_fedavgm_without_momentum_is_fedavg_with_a_server_lr():
    assert _two_steps(FedAvgM(server_lr=1.0, momentum=0.0)) == [2.0, 3.0]


def test_fedadam_two_steps_by_hand():
    # v_{-1} = tau^2 = 1, m_{-1} = 0, beta1 = beta2 = 0.5, lr 0.1
    # step 1: m = 0.5 * 2 = 1,         v = 0.5 * 1 + 0.5 * 4 = 2.5
    # step 2: m = 0.5 * 1 + 0.5 * 1 = 1, v = 0.5 * 2.5 + 0.5 * 1 = 1.75
    p1 = 0.1 * 1 / (math.sqrt(2.5) + 1)
    p2 = p1 + 0.1 * 1 / (math.sqrt(1.75) + 1)
    assert _two_steps(FedAdam(**ADAPTIVE)) == pytest.approx([p1, p2], rel=1e-12)


def test_fedyogi_two_steps_by_hand():
    # step 1: m = 1, v = 1 - 0.5 * 4 * sign(1 - 4) = 3
    # step 2: m = 1, v = 3 - 0.5 * 1 * sign(3 - 1) = 2.5
    p1 = 0.1 * 1 / (math.sqrt(3) + 1)
    p2 = p1 + 0.1 * 1 / (math.sqrt(2.5) + 1)
    assert _two_steps(FedYogi(**ADAPTIVE)) == pytest.approx([p1, p2], rel=1e-12)


def test_fedadagrad_two_steps_by_hand():
    # v_{-1} = 1; step 1: v = 1 + 4 = 5, step 2: v = 5 + 1 = 6; no momentum
    p1 = 0.1 * 2 / (math.sqrt(5) + 1)
    p2 = p1 + 0.1 * 1 / (math.sqrt(6) + 1)
    assert _two_steps(FedAdagrad(server_lr=0.1, tau=1.0)) == pytest.approx([p1, p2], rel=1e-12)


def test_pure_functions_leave_their_arguments_alone():
    params, update = PARAMS.clone(), UPDATES[0].clone()
    m, v = torch.zeros(2, dtype=torch.float64), so.initial_second_moment(params, 1.0)
    _new_params, new_m, new_v = so.fedyogi_step(params, update, m, v, **ADAPTIVE)
    assert torch.equal(params, PARAMS)
    assert torch.equal(update, UPDATES[0])
    assert m.eq(0).all()
    assert v.eq(1).all()
    assert new_m[0].item() == 1.0
    assert new_v[0].item() == 3.0


def _run(optimizer, steps: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    params = torch.zeros(5)
    for _ in range(steps):
        params = optimizer.step(params, torch.randn(5, generator=generator))
    return params


@pytest.mark.parametrize("cls", [FedAvgM, FedAdam, FedYogi, FedAdagrad])
def test_state_dict_round_trip_continues_identically(cls):
    first = cls()
    params = _run(first, 2)
    state = first.state_dict()
    assert state["optimizer"] == cls.name
    assert state["step"] == 2
    assert all(isinstance(v, (torch.Tensor, int, str)) for v in state.values())
    second = cls()
    second.load_state_dict(state)
    update = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0])
    assert torch.equal(first.step(params, update), second.step(params, update))
    assert second.state_dict()["step"] == 3
    # state_dict returns copies: the saved state did not move with the step.
    assert state["step"] == 2
    assert not torch.equal(state[cls.state_names[0]], first.state[cls.state_names[0]])


def test_loading_another_optimizers_state_is_refused():
    adam = FedAdam()
    _run(adam, 1)
    with pytest.raises(
        privfl.ConfigError, match=r"server optimizer 'fedadam'.*saved by server optimizer 'fedyogi'"
    ):
        FedYogi().load_state_dict(adam.state_dict())
    with pytest.raises(privfl.ConfigError, match="'fedavgm'"):
        FedAdagrad().load_state_dict({"optimizer": "fedavgm", "step": 1, "velocity": torch.ones(5)})
    with pytest.raises(privfl.ConfigError, match="state keys"):
        FedAdagrad().load_state_dict({"optimizer": "fedadagrad", "step": 1})


def test_empty_state_resets_the_optimizer():
    momentum = FedAvgM()
    _run(momentum, 2)
    momentum.load_state_dict({})
    assert momentum.state_dict() == {"optimizer": "fedavgm", "step": 0}
    assert torch.equal(_run(momentum, 1), _run(FedAvgM(), 1))


@pytest.mark.parametrize(
    ("factory", "key"),
    [
        (lambda: FedAvgM(momentum=1.0), "momentum"),
        (lambda: FedAvgM(server_lr=0), "server_lr"),
        (lambda: FedAdam(beta1=-0.1), "beta1"),
        (lambda: FedYogi(beta2=1), "beta2"),
        (lambda: FedAdam(tau=0.0), "tau"),
        (lambda: FedAdagrad(server_lr=math.inf), "server_lr"),
    ],
)
def test_server_optimizer_options_are_checked(factory, key):
    with pytest.raises(privfl.ConfigError, match=f"^{key} = "):
        factory()


def test_server_optimizers_are_registered():
    names = get_plugin_manager(autoload=False).components.names("server_optimizer")
    assert names == ["fedadagrad", "fedadam", "fedavgm", "fedyogi", "sgd"]


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_resume_from_a_checkpoint(name, tmp_path):
    fed = tiny_federation(server_optimizer=name)
    start = fed.params.clone()
    fed.run(2)
    assert not torch.equal(fed.params, start)
    save_checkpoint(tmp_path / "checkpoint", fed.state_dict())
    resumed = tiny_federation(server_optimizer=name)
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint"))
    assert resumed.server_optimizer.state_dict()["step"] == 2
    fed.run(3)
    resumed.run(3)
    assert torch.equal(fed.params, resumed.params)
