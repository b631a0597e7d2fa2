"""Audit a run folder's DP with canary clients: a separate audit run, and ``audit.json``.

``privfl audit RUN_DIR`` rebuilds the run that ``RUN_DIR/config.toml`` describes, adds
the canaries of a :class:`~privfl.audit.canaries.CanaryAudit` to its clients, trains that audit
run in memory (nothing of it is written but the report, so the canaries never reach the
run's model) and writes ``RUN_DIR/audit.json``: the accountant's epsilon next to the
audit's bound and estimates, with sentences that say what each means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privfl.app.checkpoint import write_atomic
from privfl.app.config import load_toml, make_config
from privfl.app.runner import CONFIG, build_federation
from privfl.audit import AuditReport, CanaryAudit, audit_federation
from privfl.errors import ConfigError
from privfl.plugins import PluginManager

AUDIT = "audit.json"


def audit_run_dir(
    run_dir: str | Path,
    *,
    canaries: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    plugins: PluginManager | None = None,
    console: Any = None,
) -> AuditReport:
    """Audit the configuration of ``run_dir`` with ``canaries`` canaries; write the report.

    :param seed: Fixes which canaries are included and their directions (the audit run
        otherwise uses the run's own seed).
    :returns: The report, also written to ``RUN_DIR/audit.json``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError("run_dir", str(run_dir), f"a run folder holding {CONFIG}")
    config = make_config(load_toml(run_dir / CONFIG))
    drawn = CanaryAudit(canaries, seed=seed)
    federation, _ = build_federation(config, plugins=plugins, clients=drawn.population)
    with federation:
        result = audit_federation(
            federation, drawn, config.rounds, confidence=confidence, console=console
        )
    write_audit(run_dir, result, canary_seed=seed)
    return result


def write_audit(run_dir: Path, result: AuditReport, *, canary_seed: int) -> Path:
    """Write ``RUN_DIR/audit.json`` atomically; return its path."""
    path = run_dir / AUDIT
    values = {**result.to_json(), "canary_seed": canary_seed}
    write_atomic(path, (json.dumps(values, indent=2) + "\n").encode())
    return path
