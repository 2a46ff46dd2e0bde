"""The timing engine: contention is seen and flagged, identical models tie, and a bound
the measurement cannot decide is said to be undecided."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

import slimserve as ss
from slimserve.check import CheckResult, _check_speedup
from slimserve.cli import UNDECIDED_EXIT, app
from slimserve.measure.bench import bench_interleaved
from slimserve.measure.timing import CpuMeter, Ratio
from slimserve.tune import Candidate, pick_best

SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


@contextmanager
def spinners(seconds: float = 60) -> Iterator[None]:
    """Busy processes on half the cores (one on this 2-core machine), bounded in time and
    stopped on leaving."""
    count = max(1, (os.cpu_count() or 2) // 2)
    processes = [
        subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)]) for _ in range(count)
    ]
    try:
        time.sleep(0.3)
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)


def test_the_meter_sees_other_processes_take_the_cpu() -> None:
    meter = CpuMeter()
    with spinners(10):
        meter.start()
        time.sleep(0.5)  # this process idles: what the machine does is the spinners'
        share = meter.share()
    assert share > 0.35, share


def test_a_timing_taken_while_a_spinner_runs_is_flagged_in_bench_json(onnx_file: Path) -> None:
    with spinners():
        result = CliRunner().invoke(
            app, ["bench", str(onnx_file), str(onnx_file), "--repeats", "10", "--json"]
        )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for model in report["models"]:
        timings = list(model["timings"].values())
        seen = [(t["contention"], t["contended"]) for t in timings]
        # Each model's figures carry the contention they were taken under, and are
        # flagged rather than presented as results.
        assert any(t["contended"] for t in timings), seen
        assert all(t["contention"] > 0.1 for t in timings), seen
        for t in timings:
            if t["contended"]:
                assert t["speedup_text"].startswith(f"{t['speedup']:.2f}x (contended")


def test_identical_models_tie_and_the_smaller_simpler_one_wins(
    digits_onnx: ss.OnnxModel, digits_test: ss.Dataset
) -> None:
    # As every timing in slimserve does (timing.TIMED_SPINNING): sessions do not spin.
    predictors = {n: ss.load_predictor(digits_onnx, spinning=False) for n in ("a", "b")}
    timings = bench_interleaved(predictors, digits_test, (1, 32), warmup=10, repeats=50)
    for batch in (1, 32):
        ratio = timings["a"][batch].speedup_over(timings["b"][batch])
        assert ratio.contended or not ratio.measurable, ratio
        assert "no measurable difference" in ratio.describe() or ratio.contended
    simple = Candidate("fp32", [], 0, "accepted", 0.98, 1000, timings=timings["a"])
    layered = Candidate("two steps", [{"quantize": {}}] * 2, 2, "accepted", 0.98, 1000)
    layered.timings = timings["b"]
    for c in (simple, layered):
        c.latency_ms = c.timings[1].p50_ms  # type: ignore[index]
        c.items_per_s = c.timings[32].items_per_s  # type: ignore[index]
    for objective in ("latency", "throughput"):
        assert pick_best([layered, simple], objective) is simple  # type: ignore[arg-type]
    smaller = Candidate("smaller", [{"quantize": {}}], 1, "accepted", 0.97, 500)
    smaller.timings, smaller.latency_ms = timings["b"], layered.latency_ms
    assert pick_best([simple, layered, smaller], "latency") is smaller  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ratio", "verdict"),
    [
        (Ratio(2.0, 1.8, 2.2, False), "pass"),
        (Ratio(1.0, 0.9, 1.1, False), "fail"),
        (Ratio(1.5, 1.3, 1.7, False), "undecided"),
        (Ratio(2.0, 1.8, 2.2, True), "undecided"),
    ],
)
def test_a_speed_bound_is_passed_failed_or_undecided(ratio: Ratio, verdict: str) -> None:
    result = CheckResult("accuracy", 0.98, 0.98, ratio.median, 0.5, 32)
    _check_speedup(result, ratio, 1.5)
    got = "fail" if result.failures else "undecided" if result.undecided else "pass"
    assert got == verdict
    if verdict == "undecided":
        assert "too noisy to decide" in result.undecided[0]


def test_check_exits_3_when_too_noisy_to_decide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slimserve.check

    undecided = CheckResult("accuracy", 0.98, 0.98, 1.5, 0.5, 32, undecided=["too noisy to decide"])
    monkeypatch.setattr(slimserve.check, "check_artifact", lambda path, bounds: undecided)
    result = CliRunner().invoke(app, ["check", str(tmp_path), "--min-speedup", "1.5"])
    assert result.exit_code == UNDECIDED_EXIT
    assert "check undecided: too noisy to decide" in result.output
