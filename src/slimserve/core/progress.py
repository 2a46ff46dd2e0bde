"""Progress as plain lines, for output that is not a terminal (CI logs, pipes), where a
live bar or spinner prints nothing until the end: the stage, the time elapsed and, when
the share of the job done is known, an estimate of the time left."""

from __future__ import annotations

import time
from collections.abc import Callable

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
