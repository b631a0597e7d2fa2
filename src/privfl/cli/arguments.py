"""The command line's conventions: no abbreviated flags, a suggestion for a misspelt flag
or command, short errors, and ``privfl run --help`` grouped by concern.

argparse does most of this; what it lacks is a suggestion for a misspelt flag (and,
before Python 3.14's ``suggest_on_error``, for a misspelt command), so
:class:`CommandParser` adds one with :func:`difflib.get_close_matches`.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from privfl.app.config import FLAG_GROUPS, config_fields

OTHER_GROUP = "other options"
"""Where ``privfl run --help`` lists a config key or component flag with no known concern."""

KIND_GROUPS = {"accountant": "privacy"}
"""The concern of component kinds that no config key chooses (DP's ``accountant``
option chooses the accountant)."""


def kind_group(kind: str, cls: Any) -> str:
    """Return the ``--help`` group of a flag declared by component class ``cls`` of ``kind``:
    the group of the config key that chooses components of that kind (``aggregator``,
    ``mechanisms``, ...), "secure aggregation" for a mechanism that ``sums_securely``."""
    if kind == "mechanism" and getattr(cls, "sums_securely", False):
        return "secure aggregation"
    groups = {spec.name: spec.metadata.get("group") for spec in config_fields()}
    return groups.get(kind) or groups.get(kind + "s") or KIND_GROUPS.get(kind, OTHER_GROUP)


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that takes no abbreviated flags (``--round 3``
    is an error, not ``--rounds 3``), names the closest real flag or command when one is
    misspelt, and reports errors in two lines instead of the whole usage text.

    Its subparsers are of the same class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> Any:
        """Parse like argparse; an unknown flag is an error that names the closest one."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(parsed)
            flag = next((item for item in extras if item.startswith("-")), None)
            if flag is None:
                parser.error(f"unexpected arguments: {' '.join(extras)}")
            flag = flag.partition("=")[0]
            # A command's flag, or else one of privfl's own (privfl --vers run).
            owner = next((p for p in (parser, self) if _closest(flag, p)), parser)
            owner.error(unknown_flag(flag, owner))
        return parsed

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: MESSAGE`` and where the help is, and exit with status 2."""
        self.exit(2, f"{self.prog}: {message}\nsee `{self.prog} --help`\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse checks a choice (here: the subcommand) before any action sees it, in
        # this method; a misspelt choice gets a suggestion here.
        choices = action.choices
        if choices is not None and value not in choices:
            what = "command" if isinstance(action, argparse._SubParsersAction) else "value"
            names = [str(choice) for choice in choices]
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"did you mean {close[0]}?" if close else f"choose from {', '.join(names)}"
            raise argparse.ArgumentError(None, f"unknown {what} {value}; {hint}")
        super()._check_value(action, value)

    def _chosen_subparser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The subparser of the command given in ``parsed``, or this parser."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
                if isinstance(chosen, CommandParser):
                    return chosen._chosen_subparser(parsed)
        return self


def unknown_flag(flag: str, parser: argparse.ArgumentParser) -> str:
    """Return the error for ``flag``, which ``parser`` does not take, naming the closest."""
    close = _closest(flag, parser)
    return f"unknown flag {flag}" + (f"; did you mean {close}?" if close else "")


def _closest(flag: str, parser: argparse.ArgumentParser) -> str | None:
    known = sorted({option for action in parser._actions for option in action.option_strings})
    close = difflib.get_close_matches(flag, known, n=1)
    return close[0] if close else None


ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_help(text: str) -> str:
    """A docstring-style help text as ``--help`` prints it: reST roles and literals as
    plain words, and ``%`` escaped (argparse formats help texts with ``%``)."""
    return ROLE.sub(r"\1", text).replace("``", "").replace("%", "%%")


def add_verbosity_flags(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """Add ``--quiet`` and ``--verbose`` (exclusive) to a subcommand's parser or group."""
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        dest="verbosity",
        const="quiet",
        default="normal",
        help="no progress bars and no per-round table: warnings, errors and a one-line "
        "summary only",
    )
    exclusive.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        dest="verbosity",
        const="verbose",
        help="also log what the library does (the `privfl` logger at DEBUG) to standard error",
    )


def flag_groups(parser: argparse.ArgumentParser, used: Sequence[str]) -> dict[str, Any]:
    """Return an argument group of ``parser`` per concern in ``used``, in the order of
    ``privfl.app.config.FLAG_GROUPS``, then "other options"."""
    order = [*FLAG_GROUPS, OTHER_GROUP]
    return {
        name: parser.add_argument_group(name, FLAG_GROUPS.get(name))
        for name in sorted(set(used), key=lambda name: order.index(name) if name in order else 99)
    }
