"""Built-in privacy accountants: ``rdp`` and ``pld``, both on Google's dp-accounting.

The classes live in :mod:`privfl.accounting`; this plugin registers them, as a
third-party plugin would register its own accountant.
"""

from __future__ import annotations

from privfl.accounting import PldPrivacyAccountant, RdpPrivacyAccountant
from privfl.plugins import hookimpl


@hookimpl
def privfl_register_accountants() -> list[type]:
    return [RdpPrivacyAccountant, PldPrivacyAccountant]
