"""Plain progress lines for logs: a line per new stage, throttled, with time left."""

from __future__ import annotations

import pytest

from slimserve.core import progress
from slimserve.core.progress import format_seconds, plain_reporter


def test_a_line_per_new_message_with_elapsed_and_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([0.0, 0.0, 10.0, 11.0, 20.0, 60.0]).__next__
    monkeypatch.setattr(progress.time, "monotonic", clock)
    lines: list[str] = []
    report = plain_reporter(lines.append, "job")  # started at 0
    report("a", None)  # t=0: first line
    report("b", 0.5)  # t=10: half done after 10 s -> ~10 s left
    report("c", 0.6)  # t=11: within 2 s of the last line: dropped
    report("c", 0.6)  # t=20: printed now
    report("c", 0.6)  # t=60: unchanged for 40 s: printed again as a heartbeat
    assert lines == [
        "job: a (0s elapsed)",
        "job: b (10s elapsed, ~10s left)",
        "job: c (20s elapsed, ~13s left)",
        "job: c (1m00s elapsed, ~40s left)",
    ]


def test_durations_read_as_people_write_them() -> None:
    assert [format_seconds(s) for s in (4.4, 185, 3720)] == ["4s", "3m05s", "1h02m"]
