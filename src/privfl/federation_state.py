"""What a federation's checkpoint holds, and the checks a checkpoint must pass to load.

Pure functions over a federation's parts, kept apart from :class:`privfl.Federation`'s
orchestration: the component states keyed by kind, position and name, the settings
a resumed federation must share with the one that wrote the checkpoint, and the
seeded choice of simulated malicious clients (part of what a seed repeats) with the
checks that an attack fits the task and the trainer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from privfl.client_state import ClientStates
from privfl.components import Attack, Trainer
from privfl.errors import ConfigError
from privfl.seeding import torch_generator


def named_components(components: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Yield ``("KIND.POSITION.NAME", component)`` for each component in ``components``
    (kind -> a component, or a list of them), the keys of checkpointed states."""
    for kind, value in components.items():
        items = value if isinstance(value, list) else [value]
        for position, component in enumerate(items):
            yield f"{kind}.{position}.{component.name}", component


def component_states(
    components: Mapping[str, Any], client_states: ClientStates
) -> dict[str, dict[str, Any]]:
    """The non-empty states of ``components``, and the client halves' kept state."""
    states = {key: c.state_dict() for key, c in named_components(components)}
    states = {key: state for key, state in states.items() if state}
    if len(client_states):
        states["client_states"] = client_states.state_dict()
    return states


def load_component_states(
    components: Mapping[str, Any], client_states: ClientStates, saved: Mapping[str, Any]
) -> None:
    """Give each component its saved state (an empty one if none was saved).

    :raises ConfigError: for saved states of components this federation does not have.
    """
    left = dict(saved)
    for key, component in named_components(components):
        component.load_state_dict(left.pop(key, {}))
    client_states.load_state_dict(left.pop("client_states", {}))
    if left:
        raise ConfigError("checkpoint", sorted(left), "component states of this federation")


def check_loadable(
    params: torch.Tensor,
    expected: torch.Tensor,
    saved_settings: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> None:
    """Refuse a checkpoint whose parameters do not fit ``expected`` or are not finite, or
    that was made with other settings."""
    if params.shape != expected.shape:
        raise ConfigError(
            "checkpoint", f"{params.numel()} parameters", f"{expected.numel()} parameters"
        )
    if not bool(torch.isfinite(params).all()):
        raise ConfigError("checkpoint", "NaN or infinite parameters", "finite parameters")
    changed = sorted(
        k for k in {*saved_settings, *settings} if saved_settings.get(k) != settings.get(k)
    )
    if changed:
        raise ConfigError(
            "checkpoint",
            f"made with other {', '.join(changed)}",
            "the settings it was made with (only rounds, the executor, evaluators and "
            "the evaluation and checkpoint intervals may change on resume)",
        )


def choose_malicious(
    fraction: float, num_clients: int, seed: int, *, attacked: bool
) -> frozenset[int]:
    """The ids of ``round(fraction * num_clients)`` clients drawn with ``seed`` (none
    without an attack; the fraction is checked either way)."""
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise ConfigError("malicious_fraction", fraction, "a number in [0, 1)")
    if not attacked:
        return frozenset()
    count = round(fraction * num_clients)
    order = torch.randperm(num_clients, generator=torch_generator(seed, "malicious"))
    return frozenset(order[:count].tolist())


def check_attack_and_trainer(attack: Attack | None, trainer: Any, task: str) -> None:
    """Refuse a label-flipping attack on a regression task or beside a custom trainer
    (which may not train on the poisoned labels), and a trainer that is not a
    :class:`~privfl.components.Trainer`."""
    if attack is not None and attack.needs_labels and task != "classification":
        raise ConfigError(
            "attack",
            attack.name,
            f"an attack that fits a {task} task: {attack.name} changes class labels, and "
            "these targets are values; use sign-flip, gaussian or alie",
        )
    if trainer is not None and not isinstance(trainer, Trainer):
        raise ConfigError("trainer", trainer, "a privfl.components.Trainer instance")
    if trainer is not None and attack is not None and attack.needs_labels:
        raise ConfigError(
            "attack", attack.name, f"an attack on updates with trainer {trainer.name!r}"
        )
