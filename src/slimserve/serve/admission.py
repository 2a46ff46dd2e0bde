"""Admission by time (``--max-queue-ms``, a latency objective): a request is queued only
when the work ahead of it, priced with the model's own measured run times, ends inside the
bound; past it the request is refused at once (503 + Retry-After) instead of waiting out a
queue it cannot beat. Off by default: the count limit (``--max-queue``) alone holds, as
benchmarks/overload.py measured no gain from a time bound on 2 shared cores.

A count limit (``--max-queue``) alone cannot do this: two batches of a CNN take a
millisecond, two batches of an encoder a quarter of a second. Run times are learned
online from the runs the server makes (the warm-up's included): an exponentially
weighted least-squares line, seconds = fixed + per_row x rows, so a queue of small
requests is priced as the merged batches it becomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DECAY = 0.97  # weight left to older runs at each new one (~30 runs of memory)


@dataclass
class RunCost:
    """The model's run time as a line in the rows it runs, fitted as runs are made."""

    weight: float = 0.0
    rows: float = 0.0
    rows_sq: float = 0.0
    seconds: float = 0.0
    rows_seconds: float = 0.0
    runs: int = 0

    def observe(self, rows: int, seconds: float) -> None:
        """One run of ``rows`` rows took ``seconds``."""
        for name in ("weight", "rows", "rows_sq", "seconds", "rows_seconds"):
            setattr(self, name, getattr(self, name) * DECAY)
        self.weight += 1.0
        self.rows += rows
        self.rows_sq += rows * rows
        self.seconds += seconds
        self.rows_seconds += rows * seconds
        self.runs += 1

    def line(self) -> tuple[float, float]:
        """(fixed seconds, seconds per row); the mean per-row time while every run seen
        had the same size (no slope to fit)."""
        if not self.weight:
            return 0.0, 0.0
        spread = self.weight * self.rows_sq - self.rows * self.rows
        if spread <= 1e-9 * max(1.0, self.weight * self.rows_sq):
            return 0.0, self.seconds / max(self.rows, 1e-9)
        per_row = (self.weight * self.rows_seconds - self.rows * self.seconds) / spread
        per_row = max(per_row, 0.0)
        fixed = max((self.seconds - per_row * self.rows) / self.weight, 0.0)
        return fixed, per_row

    def run_seconds(self, rows: int) -> float:
        fixed, per_row = self.line()
        return fixed + per_row * rows

    def queue_seconds(self, queued_rows: int, batch_rows: int) -> float:
        """How long ``queued_rows`` rows take to run, merged into batches of at most
        ``batch_rows`` rows."""
        if queued_rows <= 0:
            return 0.0
        full, rest = divmod(queued_rows, batch_rows)
        return full * self.run_seconds(batch_rows) + (self.run_seconds(rest) if rest else 0.0)

    @property
    def learned(self) -> bool:
        """Enough runs seen to price a queue (before that, only the count limit holds)."""
        return self.runs >= 8 and math.isfinite(self.seconds)
