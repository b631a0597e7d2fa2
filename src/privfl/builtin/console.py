"""Built-in console reporter: progress bars (rounds, and clients within a round) and a table.

Active when :meth:`privfl.Federation.run` is given a :class:`rich.console.Console`.
Rows are printed above the progress bar as rounds finish: round, accuracy, loss,
seconds, and any numeric values plugins add to the record (such as ``epsilon``).
The progress bar lives in ``federation.stash``, so the plugin keeps no state of its own.
"""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from privfl.plugins import hookimpl

COLUMNS = ("round", "accuracy", "loss", "seconds")
_KEY = "privfl.console"


@hookimpl
def privfl_session_start(federation, start_round: int, total_rounds: int) -> None:
    if federation.console is None:
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=federation.console,
        transient=True,
    )
    task = progress.add_task("rounds", total=total_rounds, completed=start_round - 1)
    clients = progress.add_task("clients", total=None, visible=False)
    federation.stash[_KEY] = {"progress": progress, "task": task, "clients": clients, "extra": None}
    progress.start()


@hookimpl
def privfl_round_progress(federation, round: int, done: int, total: int) -> None:
    state = federation.stash.get(_KEY)
    if state is not None:
        state["progress"].update(
            state["clients"],
            description=f"round {round} clients",
            completed=done,
            total=total,
            visible=done < total,
        )


@hookimpl
def privfl_round_finish(federation, record) -> None:
    state = federation.stash.get(_KEY)
    if state is None:
        return
    values = {k: v for k, v in record.values.items() if isinstance(v, (int, float))}
    console = state["progress"].console
    if state["extra"] is None:
        extra = sorted(values)
        state["extra"] = extra
        console.print("".join(f"{name:>12}" for name in (*COLUMNS, *extra)), style="bold")
    cells = [
        f"{record.round:>12d}",
        _cell(record.metrics.get("accuracy")),
        _cell(record.metrics.get("loss")),
        f"{record.seconds:>12.2f}",
        *(_cell(values.get(name), ".4g") for name in state["extra"]),
    ]
    console.print("".join(cells), highlight=False)
    state["progress"].advance(state["task"])


@hookimpl
def privfl_session_finish(federation) -> None:
    state = federation.stash.pop(_KEY, None)
    if state is not None:
        state["progress"].stop()


def _cell(value: float | None, style: str = ".4f") -> str:
    return f"{value:>12{style}}" if value is not None else f"{'-':>12}"
