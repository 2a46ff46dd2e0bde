"""Progress as plain lines, for output that is not a terminal (CI logs, pipes), where a
live bar or spinner prints nothing until the end: the stage, the time elapsed and, when
the share of the job done is known, an estimate of the time left."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

HEARTBEAT_S = 30.0
"""An unchanged message is repeated this often, so a long stage still shows life."""


def plain_reporter(
    write: Callable[[str], None], label: str, min_interval_s: float = 2.0
) -> Callable[[str, float | None], None]:
    """``report(message, done)``: writes ``label: message (12s elapsed, ~30s left)``
    when the message changes (at most once per ``min_interval_s``) or every
    ``HEARTBEAT_S``; ``done`` is the share of the whole job finished (0..1) or None."""
    started = time.monotonic()
    last: dict[str, object] = {"message": None, "at": float("-inf")}

    def report(message: str, done: float | None = None) -> None:
        now = time.monotonic()
        since = now - float(last["at"])  # type: ignore[arg-type]
        changed = message != last["message"]
        if (changed and since < min_interval_s) or (not changed and since < HEARTBEAT_S):
            return
        elapsed = now - started
        timing = f"{format_seconds(elapsed)} elapsed"
        if done is not None and 0 < done < 1 and elapsed > 1:
            timing += f", ~{format_seconds(elapsed * (1 - done) / done)} left"
        write(f"{label}: {message} ({timing})")
        last.update(message=message, at=now)

    return report


def format_seconds(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


@contextmanager
def stage_progress(console: Console | None, total: int) -> Iterator[Any]:
    """A function ``advance(message, fraction=None)`` for ``total`` stages: a new stage
    (fraction None) moves a rich bar; a fraction moves it within the stage. Plain lines
    when the console is no terminal; nothing without a console."""
    if console is None:
        yield lambda message, fraction=None: None
        return
    if not console.is_terminal:  # CI logs, pipes: a line per stage, elapsed and time left
        report = plain_reporter(lambda line: console.print(line, highlight=False), "optimize")
        stage = [0]

        def advance_plain(message: str, fraction: float | None = None) -> None:
            if fraction is None:
                stage[0] += 1
            report(f"[{stage[0]}/{total}] {message}", (stage[0] - 1 + (fraction or 0)) / total)

        yield advance_plain
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=total)
        first = [True]

        def advance(message: str, fraction: float | None = None) -> None:
            """A new stage (fraction None) moves the bar; a step's own progress only
            updates the text (and the bar within the stage)."""
            if fraction is None:
                if not first[0]:
                    progress.update(task, completed=int(progress.tasks[0].completed) + 1)
                first[0] = False
                progress.update(task, description=message)
                return
            whole = int(progress.tasks[0].completed)
            progress.update(task, description=message, completed=whole + min(fraction, 0.99))

        yield advance
        progress.update(task, completed=total)
