"""MLflow: params, metrics, the artifact and a registered model, in a temporary store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slimserve.cli import app

mlflow = pytest.importorskip("mlflow")

RECIPE = {
    "name": "digits-tracked",
    "model": {"example": "digits"},
    "data": {"eval": {"example": "digits", "split": "test", "samples": 128}},
    "steps": [{"quantize": {"mode": "dynamic"}}],
    "bench": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
}


def test_optimize_logs_to_mlflow(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["optimize", str(path), "--out", str(out), "--mlflow"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert (out / "mlflow.db").is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("slimserve")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["steps.0.quantize.mode"] == "dynamic"
    assert run.data.params["model.example"] == "digits"
    assert run.data.metrics["final.accuracy"] > 0.95
    assert "0.baseline.b1.p50_ms" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id, "artifact")}
    assert {"artifact/model.onnx", "artifact/manifest.json", "artifact/report.html"} <= files
    versions = client.search_model_versions("name='digits-tracked'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id


def test_missing_mlflow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    result = CliRunner().invoke(app, ["optimize", str(path), "--out", str(tmp_path), "--mlflow"])
    assert result.exit_code == 2
    assert "pip install 'slimserve[mlflow]'" in " ".join(result.output.split())
    assert not (tmp_path / "digits-tracked").exists()  # refused before any work
