"""The plugin manager: built-in plugins and third-party ones, loaded the same way.

Built-in plugins are the modules listed in :data:`BUILTIN_PLUGINS`. Third-party
plugins are found through the ``privfl`` entry-point group. Both go through
:func:`register_plugin`, so blocking a plugin by name works the same for both, and
built-ins still load when autoload of third-party plugins is off.

Environment variables:

``PRIVFL_DISABLE_PLUGIN_AUTOLOAD``
    Set to ``1`` to skip third-party plugins from entry points.
``PRIVFL_BLOCK_PLUGINS``
    Comma-separated plugin names to leave out (entry-point names, or the module
    names of built-ins such as ``privfl.builtin.console``).
``PRIVFL_TRACE_HOOKS``
    Set to ``1`` to print every hook call and its result to standard error.

Nothing is loaded at import time: call :func:`get_plugin_manager`.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from privfl import hookspecs
from privfl.errors import PluginError
from privfl.registry import ComponentRegistry, collect_components

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "privfl"
"""The entry-point group that third-party plugin distributions declare."""

BUILTIN_PLUGINS: tuple[str, ...] = (
    "privfl.builtin.samplers",
    "privfl.builtin.aggregators",
    "privfl.builtin.server_optimizers",
    "privfl.builtin.executors",
    "privfl.builtin.process_executor",
    "privfl.builtin.evaluators",
    "privfl.builtin.smpc_evaluator",
    "privfl.builtin.datasets",
    "privfl.builtin.models",
    "privfl.builtin.partitioners",
    "privfl.builtin.attacks",
    "privfl.builtin.accountants",
    "privfl.builtin.dp_mechanism",
    "privfl.builtin.secure_aggregation",
    "privfl.builtin.compressors",
    "privfl.builtin.low_rank",
    "privfl.builtin.protocol",
    "privfl.builtin.screening",
    "privfl.builtin.rundir",
    "privfl.builtin.console",
)
"""Module names of the built-in plugins, registered in this order."""

hookimpl = pluggy.HookimplMarker("privfl")
"""Marker for hook implementations: decorate ``privfl_*`` functions with it."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def blocked_plugin_names() -> list[str]:
    """Return the plugin names listed in ``PRIVFL_BLOCK_PLUGINS``."""
    raw = os.environ.get("PRIVFL_BLOCK_PLUGINS", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


class PluginManager(pluggy.PluginManager):
    """A pluggy plugin manager that also remembers which distribution installed a plugin."""

    def __init__(self) -> None:
        super().__init__("privfl")
        self.distributions: dict[str, str] = {}
        """Plugin name -> ``"distribution version"`` for plugins loaded from entry points."""
        self._components: ComponentRegistry | None = None

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` (see :meth:`pluggy.PluginManager.register`); resets components."""
        self._components = None
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        """Unregister a plugin (see pluggy); resets the collected components."""
        self._components = None
        return super().unregister(plugin, name)

    @property
    def components(self) -> ComponentRegistry:
        """The component classes registered by the plugins, collected once."""
        if self._components is None:
            self._components = collect_components(self)
        return self._components


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register ``plugin`` under ``name`` unless that name is blocked.

    The one registration call for built-in and third-party plugins alike; a hook
    implementation whose arguments do not fit its spec is a :class:`PluginError`.
    """
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} does not fit the hook specs: {exc}") from exc
    except ValueError as exc:
        raise PluginError(f"plugin {name!r} cannot be registered: {exc}") from exc


def get_plugin_manager(
    *, autoload: bool | None = None, plugins: tuple[object, ...] = ()
) -> PluginManager:
    """Return a plugin manager holding the built-in and installed plugins.

    :param autoload: Load plugins from the ``privfl`` entry-point group. Defaults to
        true unless ``PRIVFL_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param plugins: Extra plugin objects (modules or instances) to register, each
        under its module name or class name; handy in tests and notebooks.
    :raises PluginError: when a plugin implements a hook that does not exist
        (usually a typo) or does not fit a hook's signature.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for name in blocked_plugin_names():
        pm.set_blocked(name)
    for module_name in BUILTIN_PLUGINS:
        if not pm.is_blocked(module_name):
            register_plugin(pm, importlib.import_module(module_name), module_name)
    if autoload if autoload is not None else not _env_flag("PRIVFL_DISABLE_PLUGIN_AUTOLOAD"):
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            if pm.is_blocked(entry_point.name) or pm.has_plugin(entry_point.name):
                continue
            register_plugin(pm, entry_point.load(), entry_point.name)
            if entry_point.dist is not None:
                dist = entry_point.dist
                pm.distributions[entry_point.name] = f"{dist.metadata['name']} {dist.version}"
            logger.debug("loaded plugin %s (%s)", entry_point.name, entry_point.value)
    for plugin in plugins:
        register_plugin(pm, plugin, _default_name(plugin))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc} (is the function name misspelt? hooks are listed by `privfl plugins`)"
        ) from exc
    if _env_flag("PRIVFL_TRACE_HOOKS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _default_name(plugin: object) -> str:
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"
