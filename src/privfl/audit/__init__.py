"""Empirical privacy audits of client-level DP runs with canary clients.

- :mod:`privfl.audit.estimators`: Andrew et al. 2024's one-shot estimate (pure math);
- :mod:`privfl.audit.one_run`: Steinke et al. 2023's provable one-run lower bound;
- :mod:`privfl.audit.canaries`: the canary clients and the statistics they leave;
- :mod:`privfl.audit.report`: an audit run and its report.

See ``docs/explanation/privacy-audit.md`` for what each number means.
"""

from privfl.audit.canaries import CanaryAudit, CanaryScores
from privfl.audit.report import AuditReport, audit, audit_federation, report

__all__ = ["AuditReport", "CanaryAudit", "CanaryScores", "audit", "audit_federation", "report"]
