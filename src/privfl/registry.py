"""Collects the component classes that plugins register, by kind and name.

The registry is built from a plugin manager on demand (:func:`collect_components`);
there is no module-level registry. Two classes of one kind with the same name are a
start-up error that names both plugins.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy
import torch

from privfl import components, compressors, mechanisms
from privfl.errors import ConfigError, PluginError
from privfl.options import check_options, declared_options

KINDS: dict[str, tuple[str, type]] = {
    "sampler": ("privfl_register_samplers", components.ClientSampler),
    "aggregator": ("privfl_register_aggregators", components.Aggregator),
    "server_optimizer": ("privfl_register_server_optimizers", components.ServerOptimizer),
    "mechanism": ("privfl_register_mechanisms", mechanisms.PrivacyMechanism),
    "accountant": ("privfl_register_accountants", mechanisms.Accountant),
    "evaluator": ("privfl_register_evaluators", components.Evaluator),
    "executor": ("privfl_register_executors", components.Executor),
    "dataset": ("privfl_register_datasets", components.DatasetSource),
    "model": ("privfl_register_models", torch.nn.Module),
    "partition": ("privfl_register_partitioners", components.Partitioner),
    "attack": ("privfl_register_attacks", components.Attack),
    "compressor": ("privfl_register_compressors", compressors.Compressor),
}
"""Component kind -> (registration hook, required base class)."""


@dataclass(frozen=True)
class Registered:
    """A registered component class and the name of the plugin that registered it."""

    cls: type
    plugin: str


class ComponentRegistry:
    """Component classes by kind and name, as registered by a plugin manager's plugins."""

    def __init__(self, entries: Mapping[str, Mapping[str, Registered]]) -> None:
        self._entries = {kind: dict(names) for kind, names in entries.items()}

    def names(self, kind: str) -> list[str]:
        """Return the sorted names registered for ``kind``."""
        return sorted(self._entries[kind])

    def entries(self, kind: str) -> dict[str, Registered]:
        """Return name -> :class:`Registered` for ``kind``."""
        return dict(self._entries[kind])

    def get(self, kind: str, name: str) -> type:
        """Return the class registered as ``name``; unknown names are a ConfigError."""
        try:
            return self._entries[kind][name].cls
        except KeyError:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                kind, name, f"choose one of {', '.join(known) or 'nothing registered'}{hint}"
            ) from None

    def create(self, kind: str, name: str, options: Mapping[str, Any] | None = None) -> Any:
        """Build the component ``name`` with keyword ``options`` (its ``[name]`` table).

        Options the class does not declare, and values of the wrong type, are a
        ConfigError naming ``name.option``; so is a bound the constructor refuses.
        """
        cls = self.get(kind, name)
        options = dict(options or {})
        check_options(cls, name, options)
        try:
            return cls(**options)
        except ConfigError as error:
            if error.key in {spec.name for spec in declared_options(cls)}:
                raise ConfigError(f"{name}.{error.key}", error.value, error.allowed) from None
            raise


def collect_components(pm: pluggy.PluginManager) -> ComponentRegistry:
    """Call every registration hook and collect the classes by kind and name.

    :raises PluginError: when a plugin registers something that is not a class of the
        right base with a string ``name``, or two plugins register one name.
    """
    entries: dict[str, dict[str, Registered]] = {}
    for kind, (hook_name, base) in KINDS.items():
        found: dict[str, Registered] = {}
        # Call each implementation on its own so a duplicate can name both plugins.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            for cls in impl.function() or ():
                _check_class(cls, base, impl.plugin_name, hook_name)
                if cls.name in found and found[cls.name].cls is not cls:
                    raise PluginError(
                        f"two {kind} components are named {cls.name!r}: one from plugin "
                        f"{found[cls.name].plugin!r}, one from plugin {impl.plugin_name!r}; "
                        "block one with PRIVFL_BLOCK_PLUGINS or rename it"
                    )
                found[cls.name] = Registered(cls, impl.plugin_name)
        entries[kind] = found
    return ComponentRegistry(entries)


def _check_class(cls: object, base: type, plugin: str, hook: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"plugin {plugin!r}: {hook} returned {cls!r}, not a {base.__name__}")
    name = getattr(cls, "name", None)
    if not (isinstance(name, str) and name):
        raise PluginError(f"plugin {plugin!r}: {cls.__name__} needs a string `name` attribute")
