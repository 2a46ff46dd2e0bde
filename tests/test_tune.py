"""tune: picking, budgets, explanations, and a reproducible winner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app
from slimserve.tune import Candidate, TuneSpec, _explain, pick_best, tune

DIGITS = {"example": "digits"}


def candidate(
    name: str, latency: float, size: int, metric: float = 0.98, techniques: int = 1
) -> Candidate:
    c = Candidate(name, [], techniques, status="accepted", metric=metric)
    c.latency_ms, c.size_bytes, c.items_per_s = latency, size, 1000 / latency
    return c


def test_pick_best_on_a_controlled_set() -> None:
    fast = candidate("fast", 0.040, 160_000)
    faster_but_big = candidate("faster, big", 0.039, 600_000)
    small = candidate("small", 0.080, 40_000)
    assert pick_best([fast, faster_but_big, small], "latency") is fast  # a tie goes to size
    assert pick_best([fast, faster_but_big, small], "size") is small
    assert pick_best([fast, small], "throughput") is fast
    assert pick_best([], "latency") is None


def test_explanation_names_the_closest_and_the_cause() -> None:
    spec = TuneSpec(model=DIGITS, data={}, max_drop=0.01)
    tried = [
        candidate("static int8", 0.05, 100, metric=0.90),
        candidate("dynamic int8", 0.05, 100, metric=0.93),
    ]
    for c in tried:
        c.status = "rejected"
    lines = _explain(tried, "accuracy", 0.98, spec)
    assert "No candidate kept accuracy within 0.0100 of the baseline (0.9800)" in lines[0]
    assert "Closest: dynamic int8 at 0.9300" in lines[1]
    assert any("too sensitive to int8" in line for line in lines)


def test_budget_is_respected(tmp_path: Path) -> None:
    data = {"eval": {"example": "digits", "split": "test"}}
    result = tune(TuneSpec(model=DIGITS, data=data, budget_s=0.0), tmp_path)
    assert result.best is None
    assert result.candidates  # all() of nothing would pass
    assert all(c.status.startswith("skipped") for c in result.candidates)


def test_nothing_within_tolerance_exits_1_with_reasons(tmp_path: Path) -> None:
    x, _ = __import__("slimserve.examples.digits", fromlist=["load_split"]).load_split("test")
    np.savez(tmp_path / "unlabeled.npz", input=x[:200])
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "example:digits",
            "--data",
            str(tmp_path / "unlabeled.npz"),
            "--max-drop",
            "0",
            "--budget",
            "5m",
            "--runtimes",
            "onnx",  # a float32 torch program of the same model would be exact
            "--out",
            str(tmp_path / "out"),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1, result.output
    assert "No candidate kept cosine_mean within 0.0000" in result.output
    assert not (tmp_path / "out" / "best-recipe.yaml").exists()
    # off a terminal, the search shows itself in plain lines: candidate, elapsed, time left
    lines = [line for line in result.output.splitlines() if line.endswith(" left)")]
    assert lines and all(line.startswith("tune: ") and "elapsed" in line for line in lines)


@pytest.mark.slow
def test_tune_beats_single_techniques_and_reproduces(tmp_path: Path) -> None:
    data = {
        "eval": {"example": "digits", "split": "test"},
        "calibration": {"example": "digits", "split": "train", "samples": 256},
        "train": {"example": "digits", "split": "train"},
    }
    spec = TuneSpec(
        model=DIGITS, data=data, max_drop=0.01, objective="size", budget_s=600, sparsities=(0.5,)
    )
    result = tune(spec, tmp_path)
    best = result.best
    statuses = "; ".join(f"{c.name}: {c.status}" for c in result.candidates)
    assert best is not None and best.techniques == 2, statuses  # prune + int8 together
    assert result.baseline_metric - (best.metric or 0) <= 0.01
    program = next(c for c in result.candidates if c.name.startswith("torch program"))
    assert program.status == "accepted" and program.items_per_s, statuses  # timed with the rest
    singles = [c for c in result.candidates if c.status == "accepted" and c.techniques == 1]
    assert len(singles) >= 5
    for single in singles:
        assert (best.size_bytes or 0) < 0.5 * (single.size_bytes or 0), single.name
    assert (tmp_path / "tune-pareto.png").read_bytes()[:4] == b"\x89PNG"
    recipe = yaml.safe_load((tmp_path / "best-recipe.yaml").read_text())
    assert recipe["steps"] == best.steps
    again = ss.run_recipe(ss.parse_recipe(recipe), tmp_path / "again")
    assert again.artifact.manifest.final["accuracy"] == pytest.approx(
        ss.load_artifact(tmp_path / "tuned").manifest.final["accuracy"]
    )
