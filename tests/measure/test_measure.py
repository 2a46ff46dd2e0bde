"""eval, bench, report and check, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app
from slimserve.data import parse_data_spec
from slimserve.measure.evaluate import evaluate

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def test_eval_with_labels_and_reference(artifact: Path) -> None:
    result = runner.invoke(
        app,
        [
            "eval",
            str(artifact),
            "--data",
            "example:digits:test",
            "--reference",
            "example:digits",
            "--json",
        ],
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["samples"] == 450
    assert metrics["accuracy"] > 0.97 and metrics["top5_accuracy"] >= metrics["accuracy"]
    assert metrics["cosine_mean"] > 0.99 and 0 < metrics["top5_agreement"] <= 1


def test_eval_without_labels_or_reference_says_what_to_add(tmp_path: Path, onnx_file: Path) -> None:
    np.savez(tmp_path / "x.npz", input=np.zeros((4, 1, 8, 8), "f4"))
    result = runner.invoke(app, ["eval", str(onnx_file), "--data", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "--reference" in result.output


def test_custom_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_onnx, digits_test
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "my_metrics.py").write_text(
        "def margin(outputs, labels):\n    import numpy as np\n"
        "    top = np.sort(outputs, axis=1)\n    return float((top[:, -1] - top[:, -2]).mean())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    metrics = evaluate(ss.load_predictor(digits_onnx), digits_test, custom="my_metrics:margin")
    assert metrics["margin"] > 0


def test_top_k_agreement_on_known_scores() -> None:
    from slimserve.core.metrics import fidelity

    ref = np.array([[5, 4, 3, 2, 1, 0, 0.0]])
    cand = np.array([[5, 4, 3, 0, 0, 2, 1.0]])
    assert fidelity(ref, cand, k=3)["top3_agreement"] == 1.0
    assert fidelity(ref, cand, k=5)["top5_agreement"] == pytest.approx(0.6)  # {0,1,2} of 5


def test_data_spec_strings(tmp_path: Path) -> None:
    assert parse_data_spec("example:digits").split == "test"
    assert parse_data_spec("example:digits:train").split == "train"
    assert parse_data_spec("python:pkg.mod:fn:val").python == "pkg.mod:fn"
    assert parse_data_spec(str(tmp_path / "a.npz")).npz == tmp_path / "a.npz"
    with pytest.raises(ss.DataError, match="Cannot read data spec 'digits'"):
        parse_data_spec("digits")


def test_bench_json_schema_and_ratios(artifact: Path) -> None:
    result = runner.invoke(
        app,
        [
            "bench",
            "example:digits",
            str(artifact),
            "--batch-sizes",
            "1,8",
            "--repeats",
            "5",
            "--warmup",
            "1",
            "--json",
        ],
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["schema_version"] == 1 and report["baseline"] == "example:digits"
    from slimserve.core.cpu import cpu_features

    assert report["cpu_features"] == sorted(cpu_features())  # figures name their CPU
    first, second = report["models"]
    assert first["timings"]["8"]["speedup"] == 1.0
    assert first["size_ratio"] == 1.0 and second["size_ratio"] < 0.3
    for model in report["models"]:
        assert set(model["timings"]) == {"1", "8"}
        t = model["timings"]["1"]
        assert t["p50_ms"] <= t["p95_ms"] <= t["p99_ms"]
        assert model["compressed_bytes"] < model["size_bytes"]
    # The speed-up is the median of per-round ratios (paired in one interleaved run), with
    # their spread; the rounds and the contention they ran under are in the report.
    t = second["timings"]["8"]
    assert t["speedup_low"] <= t["speedup"] <= t["speedup_high"]
    assert len(t["rounds_ms"]) >= 3 and 0.0 <= t["contention"] <= 1.0
    assert isinstance(t["contended"], bool) and isinstance(t["speedup_measurable"], bool)
    per_round = sorted(
        b / a for a, b in zip(t["rounds_ms"], first["timings"]["8"]["rounds_ms"], strict=True)
    )
    assert t["speedup"] == pytest.approx(float(np.median(per_round)))


def test_bench_table_and_bad_batch_sizes(onnx_file: Path) -> None:
    result = runner.invoke(app, ["bench", str(onnx_file), "--repeats", "3"], env=WIDE)
    assert result.exit_code == 0 and "p99 ms" in result.output  # random inputs from the I/O spec
    result = runner.invoke(app, ["bench", str(onnx_file), "--batch-sizes", "one"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output


def test_report_writes_html_with_embedded_plots(artifact: Path) -> None:
    result = runner.invoke(app, ["report", str(artifact.parent)], env=WIDE)
    assert result.exit_code == 0, result.output
    html = (artifact / "report.html").read_text()
    assert "<table>" in html and "quantize static int8" in html
    assert 'src="data:image/png;base64,' in html and 'src="plots/' not in html
    loaded = ss.load_artifact(artifact)  # re-saved with hashes that still verify
    assert "report.html" in loaded.manifest.files and "plots/tradeoff.png" in loaded.manifest.files


def test_report_on_a_folder_without_artifacts(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no artifact" in result.output


def test_check_passes_and_fails(artifact: Path, tmp_path: Path) -> None:
    ok = runner.invoke(
        app,
        ["check", str(artifact), "--max-drop", "0.02", "--max-size-ratio", "0.3", "--repeats", "5"],
        env=WIDE,
    )
    assert ok.exit_code == 0, ok.output
    assert "check passed" in ok.output
    destructive = {
        "name": "destroyed",
        "model": {"example": "digits"},
        "data": {"eval": {"example": "digits", "split": "test"}},
        "steps": [{"prune": {"sparsity": 0.97, "scope": "global"}}],
        "goal": {"max_drop": 0.01},
        "bench": {"batch_sizes": [8], "warmup": 1, "repeats": 3},
    }
    path = tmp_path / "destroy.yaml"
    path.write_text(yaml.safe_dump(destructive))
    assert (
        runner.invoke(app, ["optimize", str(path), "--out", str(tmp_path)], env=WIDE).exit_code == 0
    )
    bad = runner.invoke(app, ["check", str(tmp_path / "destroyed"), "--repeats", "5"], env=WIDE)
    assert bad.exit_code == 1
    assert (
        "check failed: accuracy dropped" in bad.output
        and "more than the allowed 0.0100" in bad.output
    )
    slow = runner.invoke(
        app, ["check", str(artifact), "--min-speedup", "1000", "--repeats", "5"], env=WIDE
    )
    # a 1000x bound always fails, unless other processes take the CPU during the timing:
    # then check says it cannot decide (exit 3) rather than guess
    contended = slow.exit_code == 3 and "other processes took over" in slow.output
    assert contended or (slow.exit_code == 1 and "below the required 1000.00x" in slow.output)


def test_check_reports_each_bound_as_json_and_junit(artifact: Path, tmp_path: Path) -> None:
    import json
    import xml.etree.ElementTree as ET

    report = tmp_path / "reports" / "check.xml"
    args = ["check", str(artifact), "--max-drop", "0.02", "--max-size-ratio", "0.3"]
    result = runner.invoke(
        app,
        [*args, "--min-speedup", "1000", "--repeats", "5", "--json", "--junit", str(report)],
        env=WIDE,
    )
    assert result.exit_code in (1, 3), result.output  # 1000x: failed, or undecided if contended
    payload = json.loads(result.output)
    bounds = {b["name"]: b for b in payload["bounds"]}
    assert list(bounds) == ["accuracy drop", "batch-16 speed-up", "size ratio"]
    assert bounds["accuracy drop"]["status"] == bounds["size ratio"]["status"] == "passed"
    speed = bounds["batch-16 speed-up"]
    assert speed["status"] in ("failed", "undecided") and speed["required"] == ">= 1000x"
    assert "across rounds" in speed["noise"] and speed["message"]
    assert payload["status"] == speed["status"]
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "3"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    outcome = cases["batch-16 speed-up"].find(
        "failure" if speed["status"] == "failed" else "skipped"
    )
    assert outcome is not None and "required >= 1000x, measured" in (outcome.text or "")
    assert cases["size ratio"].find("failure") is None
