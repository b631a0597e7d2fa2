"""Built-in run directory: history, checkpoints, status and the final model.

Active when :meth:`privfl.Federation.run` is given a ``run_dir``. The folder holds:

``history.jsonl``
    one JSON record per round (:meth:`privfl.records.RoundRecord.to_json`);
``checkpoint.safetensors``
    the federation state after the last checkpointed round;
``status.json``
    ``running``, ``complete``, ``stopped`` or ``failed``, the last round and why it
    stopped; only ``complete`` and ``stopped`` runs have a final model;
``model.safetensors``
    the final global model's state dict;
``run.lock``
    locked (``flock``) by the process that runs or resumes the run, so two processes
    never write one folder.

``history.jsonl`` is appended and flushed to disk after each round; the other files
are replaced atomically (write, flush, rename). A resumed run rewrites
``history.jsonl`` without the rounds after its checkpoint, so a run killed at any
point and resumed writes the same model. Resuming reads ``config.toml``, the
checkpoint and the history, never ``status.json``, which it rewrites: a damaged or
missing status file is no obstacle, while a damaged history, checkpoint or config is
refused with the file named.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from privfl import __version__
from privfl.app.checkpoint import save_checkpoint, save_model, write_atomic
from privfl.errors import ConfigError
from privfl.plugins import hookimpl

logger = logging.getLogger(__name__)

HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.safetensors"
STATUS = "status.json"
MODEL = "model.safetensors"
LOCK = "run.lock"


def lock_run_dir(run_dir: Path) -> int:
    """Take the run folder's lock for this process; return the open file that holds it.

    The lock is ``flock`` on ``run.lock``: the operating system releases it when the
    file is closed or the process ends, also by a kill, so a stale lock never blocks a
    resume. A second ``privfl`` process on the same folder is refused.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(handle, 32).decode(errors="replace").strip() or "another process"
        os.close(handle)
        raise ConfigError(
            "run_dir",
            str(run_dir),
            f"a run folder that no other privfl process is using (process {holder} is)",
        ) from None
    os.ftruncate(handle, 0)
    os.write(handle, str(os.getpid()).encode())
    return handle


def refuse_overwrite(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds another run's checkpoint.

    A federation continues such a run after :meth:`privfl.Federation.resume` (from
    Python) or ``privfl resume`` (a command-line run).
    """
    if (run_dir / CHECKPOINT).exists():
        raise ConfigError(
            "run_dir",
            str(run_dir),
            "a new folder, or call federation.resume(run_dir) first to continue the run "
            f"whose {CHECKPOINT} is there",
        )


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files that a kill during an atomic write left behind."""
    for leftover in run_dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def write_status(run_dir: Path, status: str, round: int, stop_reason: str | None = None) -> None:
    """Replace ``status.json``."""
    record = {"status": status, "round": round, "stop_reason": stop_reason, "privfl": __version__}
    write_atomic(run_dir / STATUS, (json.dumps(record, indent=2) + "\n").encode())


def read_history(run_dir: Path) -> list[dict]:
    """Return the records of ``history.jsonl`` (empty if there is none).

    A partial last line, which a run killed while appending leaves, is dropped (that
    round is rerun from the checkpoint).

    :raises ConfigError: for a file that is not UTF-8 text, or a line before the last
        that is not a JSON record with a round number: the history was damaged.
    """
    path = run_dir / HISTORY
    if not path.exists():
        return []
    damaged = (
        "one JSON record with a round number per line; {} (restore the file, or start a new run)"
    )
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise ConfigError("history", str(path), damaged.format("it is not text")) from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
            if number == len(lines):
                break  # the partial last line of a kill
        if not (isinstance(record, dict) and isinstance(record.get("round"), int)):
            raise ConfigError("history", str(path), damaged.format(f"line {number} is not"))
        records.append(record)
    return records


@hookimpl
def privfl_session_start(federation, start_round: int) -> None:
    run_dir = federation.run_dir
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    kept = [r for r in read_history(run_dir) if r["round"] < start_round]
    write_atomic(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in kept).encode())
    write_status(run_dir, "running", start_round - 1)


@hookimpl(trylast=True)
def privfl_round_finish(federation, record) -> None:
    run_dir = federation.run_dir
    if run_dir is None:
        return
    with (run_dir / HISTORY).open("a") as history:
        history.write(json.dumps(record.to_json()) + "\n")
        history.flush()
        os.fsync(history.fileno())
    last = record.round == federation.total_rounds
    if record.round % federation.checkpoint_every == 0 or last:
        save_checkpoint(run_dir / CHECKPOINT, federation.state_dict())
        logger.debug("round %d: checkpoint written to %s", record.round, run_dir / CHECKPOINT)
    write_status(run_dir, "running", record.round)


@hookimpl
def privfl_session_finish(federation, status: str, stop_reason: str | None) -> None:
    run_dir = federation.run_dir
    if run_dir is None:
        return
    if status in ("complete", "stopped"):
        save_checkpoint(run_dir / CHECKPOINT, federation.state_dict())
        save_model(run_dir / MODEL, federation.global_model())
    write_status(run_dir, status, federation.round, stop_reason)
