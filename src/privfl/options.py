"""Component options: what each component accepts, as it declares it.

A component declares its options once, in its constructor: each keyword parameter is
an option, with the parameter's name, type annotation and default; its help is the
``:param NAME:`` line of the class docstring; a class may also give options a
command-line flag (:attr:`privfl.Component.flags`, such as ``--dp-clip`` for DP's
``clip``). Bounds are checked by the constructor, which raises
:class:`privfl.ConfigError` naming the option.

This module reads those declarations (:func:`declared_options`) and checks values
against them before a component is built (:func:`check_options`), so that an unknown
or misspelt option, or a value of the wrong type, is refused with the option's table
name and a suggestion, for built-in and third-party components alike.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from privfl.errors import ConfigError


@dataclass(frozen=True)
class OptionSpec:
    """One declared option of a component class.

    :ivar name: The keyword parameter, and the key in the component's table.
    :ivar type: The annotation as written (``"float"``, ``"int | None"``).
    :ivar default: The default value (:data:`inspect.Parameter.empty` if required).
    :ivar help: The docstring's ``:param:`` text, one line.
    :ivar flag: The command-line flag, if the class declares one.
    """

    name: str
    type: str
    default: Any
    help: str
    flag: str | None = None

    @property
    def required(self) -> bool:
        """True when the option has no default."""
        return self.default is inspect.Parameter.empty


_PARAM = re.compile(r"^\s*:param (\w+):\s*(.*)$")


def _param_help(cls: type) -> dict[str, str]:
    """``:param NAME: text`` lines of ``cls``'s docstring (and its bases'), joined."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        current = None
        for line in inspect.cleandoc(klass.__doc__ or "").splitlines():
            match = _PARAM.match(line)
            if match:
                current = match.group(1)
                found[current] = match.group(2).strip()
            elif current and line.startswith(" ") and line.strip():
                found[current] += " " + line.strip()
            else:
                current = None
    return found


def declared_options(cls: type) -> list[OptionSpec]:
    """Return the options ``cls`` declares, in constructor order.

    A constructor that takes ``**kwargs`` accepts anything; its named parameters are
    still listed.
    """
    helps = _param_help(cls)
    flags = dict(getattr(cls, "flags", {}))
    specs = []
    for param in inspect.signature(cls).parameters.values():
        if param.kind not in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            continue
        annotation = param.annotation
        kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if annotation is param.empty:
            kind = ""
        specs.append(
            OptionSpec(
                param.name, kind, param.default, helps.get(param.name, ""), flags.get(param.name)
            )
        )
    return specs


def accepts_any(cls: type) -> bool:
    """True when ``cls``'s constructor takes ``**kwargs``."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls).parameters.values())


_CHECKS: dict[str, tuple[str, Any]] = {
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "Path": ("a path", lambda v: isinstance(v, str)),
    "None": ("unset", lambda v: v is None),
}


def check_value(spec: OptionSpec, value: Any, table: str) -> None:
    """Refuse ``value`` if it fits none of the types in ``spec``'s annotation.

    Annotations other than unions of ``bool``, ``int``, ``float``, ``str``, ``Path``
    and ``None`` are not checked here (the constructor checks them).
    """
    parts = [p.strip() for p in spec.type.split("|")] if spec.type else []
    if not parts or any(p not in _CHECKS for p in parts):
        return
    if not any(_CHECKS[p][1](value) for p in parts):
        allowed = " or ".join(_CHECKS[p][0] for p in parts)
        raise ConfigError(f"{table}.{spec.name}", value, allowed)


def check_options(cls: type, table: str, values: Mapping[str, Any]) -> None:
    """Check ``values`` (the table ``[table]``) against ``cls``'s declared options.

    :raises ConfigError: for an option ``cls`` does not declare (with a close match,
        if any, and the list of options it does) or a value of the wrong type.
    """
    specs = {spec.name: spec for spec in declared_options(cls)}
    if not accepts_any(cls):
        for key, value in values.items():
            if key not in specs:
                close = difflib.get_close_matches(key, list(specs), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                known = ", ".join(specs) or "none"
                raise ConfigError(
                    f"{table}.{key}", value, f"{hint}[{table}] takes the options {known}"
                )
    for key, value in values.items():
        if key in specs:
            check_value(specs[key], value, table)
    for spec in specs.values():
        if spec.required and spec.name not in values:
            how = f" ({spec.flag} on the command line)" if spec.flag else ""
            raise ConfigError(
                f"{table}.{spec.name}", "unset", f"a value: [{table}] needs {spec.name}{how}"
            )


def positive_number(key: str, value: float) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (not a bool), else raise
    a ConfigError naming ``key``: the check of components' rates, scales and bounds."""
    if not (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)
