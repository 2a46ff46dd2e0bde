"""The one timing engine: candidates interleaved in rounds, each pass watched for
contention, ratios from paired rounds.

A shared 2-core machine makes single timings worthless: another process can take half
the CPU for a second and make one model look twice as slow. So:

- in each *round* the candidates take turns in 5 ms chunks of calls (rotating who goes
  first) until each has made its pass, so drift hits all of them alike and each round
  pairs them;
- around every round, the share of the machine's CPU that *other* processes took is
  read from /proc/stat (machine busy time minus this process's own, over the round's
  wall time): a round above ``CONTENDED`` is run again, up to ``RETRIES`` times, and if
  it stays contended the timing is flagged as such instead of being presented as a
  result;
- a ratio between two candidates is the median of their per-round ratios, with the
  spread of those ratios; when the spread straddles 1 it is "no measurable difference".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CONTENDED = 0.25  # other processes' share of the machine's CPU that flags a pass
RETRIES = 2  # extra tries of a contended pass before it is kept, flagged
MIN_PASS_S = 0.05  # a pass lasts at least this long: /proc/stat counts in 10 ms ticks
CHUNK_S = 0.005  # the calls a candidate makes before the next one's turn in a round
MIN_EFFECT = 0.05  # a ratio within 5 % of 1 is never called a difference on a shared machine
# Sessions timed side by side do not spin: an ONNX Runtime pool that spins after its run
# takes the CPU from the next session's run (two sessions of one model measured 0.6x-1.8x
# each other per round with spinning, 0.99x-1.01x without). A batching server does not
# spin either (ServeConfig.ort_spinning).
TIMED_SPINNING = False


class CpuMeter:
    """Other processes' share of the machine's CPU between ``start()`` and ``share()``."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.cpus = os.cpu_count() or 1
        self._start: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [float(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
        own = os.times()
        return busy / self.ticks, time.perf_counter(), own.user + own.system

    def start(self) -> None:
        self._start = self._sample()

    def share(self) -> float:
        """Other processes' CPU seconds / the machine's CPU seconds since ``start()``."""
        end = self._sample()
        if self._start is None or end is None:
            return 0.0
        busy = end[0] - self._start[0]
        wall = end[1] - self._start[1]
        own = end[2] - self._start[2]
        if wall <= 0:
            return 0.0
        return float(min(1.0, max(0.0, (busy - own) / (wall * self.cpus))))


@dataclass(frozen=True)
class Timed:
    """One candidate's calls: every call's seconds, each round's median, and for each
    round the contention of the pass that was kept."""

    calls_s: tuple[float, ...]
    round_s: tuple[float, ...]
    contention: tuple[float, ...]

    @property
    def contended(self) -> bool:
        """True when a kept pass stayed above ``CONTENDED`` after its retries."""
        return any(c > CONTENDED for c in self.contention)

    @property
    def spread(self) -> float:
        """Relative spread of the per-round medians: (p75 - p25) / p50."""
        rounds = np.array(self.round_s)
        middle = float(np.median(rounds))
        if middle <= 0:
            return 0.0
        return float((np.percentile(rounds, 75) - np.percentile(rounds, 25)) / middle)


def run_rounds(
    calls: dict[str, Callable[[], object]], rounds: int, calls_per_pass: int, warmup: int
) -> dict[str, Timed]:
    """Time every callable in ``rounds`` rounds. In a round the callables take turns in
    chunks of ``CHUNK_S`` (rotating who goes first) until each has made its pass:
    ``calls_per_pass`` calls or more, so that the round lasts ``MIN_PASS_S`` per callable
    for the CPU meter. A round that other processes contended is run again, up to
    ``RETRIES`` times. Chunks, not single calls, take turns: a runtime whose threads spin
    after a call (PyTorch's OpenMP) would slow the next one's call; chunks short enough
    still pair the callables closely. The warm-up lasts until times settle."""
    names = list(calls)
    per_pass, chunk = {}, {}
    for name in names:
        _warm_up(calls[name], warmup)
        started = time.perf_counter()
        calls[name]()
        one = max(time.perf_counter() - started, 1e-6)
        per_pass[name] = max(calls_per_pass, min(10_000, int(MIN_PASS_S / one) + 1))
        chunk[name] = max(1, min(per_pass[name], int(CHUNK_S / one)))
    meter = CpuMeter()
    samples: dict[str, list[float]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    shares: dict[str, list[float]] = {n: [] for n in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for _attempt in range(RETRIES + 1):
            times: dict[str, list[float]] = {n: [] for n in names}
            meter.start()
            while any(len(times[n]) < per_pass[n] for n in names):
                for name in order:
                    for _ in range(min(chunk[name], per_pass[name] - len(times[name]))):
                        started = time.perf_counter()
                        calls[name]()
                        times[name].append(time.perf_counter() - started)
            share = meter.share()
            if share <= CONTENDED:
                break
        for name in names:
            samples[name].extend(times[name])
            medians[name].append(float(np.median(times[name])))
            shares[name].append(share)
    return {n: Timed(tuple(samples[n]), tuple(medians[n]), tuple(shares[n])) for n in names}


def _warm_up(call: Callable[[], object], warmup: int) -> None:
    """``warmup`` calls, then more until two successive groups of 5 agree within 10 %
    (caches, allocators and thread pools settled), at most ``4 * warmup`` in all."""
    times = []
    for count in range(max(warmup, 10) * 4):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        if count + 1 >= max(warmup, 10):
            last, previous = np.median(times[-5:]), np.median(times[-10:-5])
            if abs(last - previous) <= 0.1 * previous:
                return


@dataclass(frozen=True)
class Ratio:
    """``candidate`` vs ``baseline`` throughput: the median of per-round ratios and the
    25th-75th percentile range of them."""

    median: float
    low: float
    high: float
    contended: bool

    @property
    def measurable(self) -> bool:
        """False when the per-round ratios straddle 1, or the median is within
        ``MIN_EFFECT`` of it: no measurable difference."""
        return (self.low > 1.0 or self.high < 1.0) and abs(self.median - 1.0) >= MIN_EFFECT

    def describe(self) -> str:
        if self.contended:
            return f"{self.median:.2f}x (contended: other processes took the CPU; not a result)"
        if not self.measurable:
            return f"no measurable difference ({self.low:.2f}x-{self.high:.2f}x across rounds)"
        return f"{self.median:.2f}x ({self.low:.2f}x-{self.high:.2f}x across rounds)"


def speedup(candidate: Timed, baseline: Timed) -> Ratio:
    """How many times faster ``candidate`` is than ``baseline``, paired round by round."""
    ratios = np.array(baseline.round_s) / np.maximum(np.array(candidate.round_s), 1e-12)
    return Ratio(
        float(np.median(ratios)),
        float(np.percentile(ratios, 25)),
        float(np.percentile(ratios, 75)),
        candidate.contended or baseline.contended,
    )
