"""Exceptions that privfl raises on purpose.

Every error a user can cause by a bad setting or bad input is a :class:`PrivflError`:
the command line prints its message and exits with status 2, without a traceback.
"""

from __future__ import annotations

from typing import Any


class PrivflError(Exception):
    """Base class of the errors that privfl reports to users as plain messages."""


class ConfigError(PrivflError, ValueError):
    """A setting has a value that cannot work.

    The message names the setting (``key``), the value given and what is allowed, so
    that the user can fix the call or the config file without reading the source.
    """

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key} = {value!r} is not allowed: {allowed}")


class DataError(PrivflError):
    """Input data is missing or malformed (for example a truncated IDX file)."""


class PluginError(PrivflError):
    """Plugins do not fit together: a misspelt hook or two components with one name."""


class ClientError(PrivflError):
    """A client half failed where the executor runs it (a worker process, a Ray actor, a
    Flower SuperNode): the message names the client or node and the error it raised
    there. The run stops, since the client's failure is not a protocol-level dropout."""


class RoundAborted(PrivflError):  # noqa: N818 -- names an event, not a bug
    """A round could not finish (for example too few clients left for secure aggregation).

    The round protocol catches it: the global model stays as it was and the round's
    record says why (``aborted``).
    """


class PrivacyWarning(UserWarning):
    """A setting weakens a privacy guarantee (such as DP noise from a non-secure generator)."""


class UtilityWarning(UserWarning):
    """A setting will likely keep the model from learning (such as DP noise that drowns
    the averaged update); the message gives the numbers and the fix."""


class PerformanceWarning(UserWarning):
    """privfl takes a slower path than asked for (such as training clients one at a time
    when the model cannot be stacked); results are unaffected, the message says why."""
