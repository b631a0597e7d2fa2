"""privfl-tensorboard: each round's numbers, and the run's config, as TensorBoard events.

Installed, the plugin writes an event file for every run it knows where to put:

- by default in ``RUN_DIR/tensorboard`` (runs with a run folder, as every ``privfl
  run`` has), so ``tensorboard --logdir runs`` shows each run under its folder's name;
- with ``PRIVFL_TENSORBOARD_DIR=DIR`` in ``DIR/RUN_NAME`` (``DIR/session-TIMESTAMP``
  for a :class:`privfl.Federation` run from Python without a run folder).

A run with neither writes nothing. Each round adds scalars at step = round number:

``metrics/NAME``
    the evaluators' metrics (``accuracy``, ``loss``), on evaluation rounds;
``round/train_loss``, ``round/seconds``, ``round/num_examples``, ``round/clients``
    what every round records;
``values/NAME``
    every number plugins add to the round's record (``epsilon``, ``delta``,
    ``secagg_kb_sent_per_client``...); nested values such as per-client byte counts
    are left to ``history.jsonl``.

The run's configuration is written once as the text ``config`` (``config.toml`` of
the run folder, or the federation's settings as JSON). A resumed run purges the
steps from its first round on, so the rounds it runs again after its checkpoint are
not shown twice. The writer lives in ``federation.stash``: the plugin keeps no state
of its own. Leave it out of a run with ``PRIVFL_BLOCK_PLUGINS=tensorboard``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import privfl

ENVIRONMENT = "PRIVFL_TENSORBOARD_DIR"
"""Environment variable naming a folder to write every run's events under."""

FOLDER = "tensorboard"
"""The events' folder inside a run folder, when :data:`ENVIRONMENT` is not set."""

_KEY = "privfl_tensorboard"


def log_dir(run_dir: Path | None, environment: str | None) -> Path | None:
    """Where a run's events go: see the module's docstring; None when nowhere."""
    if environment:
        name = run_dir.name if run_dir is not None else time.strftime("session-%Y%m%d-%H%M%S")
        return Path(environment) / name
    return run_dir / FOLDER if run_dir is not None else None


def round_scalars(record: privfl.RoundRecord) -> dict[str, float]:
    """The scalars of one round: tag -> finite number (see the module's docstring)."""
    scalars = {f"metrics/{name}": value for name, value in record.metrics.items()}
    scalars |= {
        "round/train_loss": record.train_loss,
        "round/seconds": record.seconds,
        "round/num_examples": record.num_examples,
        "round/clients": len(record.clients),
    }
    scalars |= {
        f"values/{name}": value
        for name, value in record.values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return {tag: float(value) for tag, value in scalars.items() if math.isfinite(value)}


def config_text(federation: privfl.Federation) -> str:
    """The run's configuration as Markdown for TensorBoard's text tab."""
    config = federation.run_dir / "config.toml" if federation.run_dir is not None else None
    if config is not None and config.is_file():
        return "```toml\n" + config.read_text() + "```"
    return "```json\n" + json.dumps(federation.settings, indent=2, default=str) + "\n```"


@privfl.hookimpl
def privfl_session_start(federation: privfl.Federation, start_round: int) -> None:
    folder = log_dir(federation.run_dir, os.environ.get(ENVIRONMENT))
    if folder is None:
        return
    # Imported here: torch.utils.tensorboard loads tensorboard's protobufs, which
    # privfl commands that write no events need not pay for.
    from torch.utils.tensorboard import SummaryWriter

    writer: Any = SummaryWriter(str(folder), purge_step=start_round if start_round > 1 else None)
    if start_round == 1:
        writer.add_text("config", config_text(federation), global_step=0)
    federation.stash[_KEY] = writer


@privfl.hookimpl
def privfl_round_finish(federation: privfl.Federation, record: privfl.RoundRecord) -> None:
    writer = federation.stash.get(_KEY)
    if writer is None:
        return
    for tag, value in round_scalars(record).items():
        writer.add_scalar(tag, value, global_step=record.round)
    writer.flush()


@privfl.hookimpl
def privfl_session_finish(federation: privfl.Federation) -> None:
    writer = federation.stash.pop(_KEY, None)
    if writer is not None:
        writer.close()
