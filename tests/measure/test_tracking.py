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
    assert not [k for k in run.data.metrics if " " in k]  # e.g. 2.quantize_dynamic_int8.…
    assert any(k.startswith("2.quantize_dynamic_int8.") for k in run.data.metrics)
    assert "None" not in run.data.params.values()  # unset options are left out
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


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///tmp/slimserve-mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),
        ("mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),  # a bare path is a file store too
        ("ftp://host/store", "no tracking store for 'ftp:'"),
    ],
)
def test_a_uri_mlflow_would_refuse_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str, message: str
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    result = CliRunner().invoke(
        app, ["optimize", str(path), "--out", str(tmp_path), "--mlflow-uri", uri]
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "digits-tracked").exists()  # refused before any work


def test_tune_refuses_a_bad_uri_before_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    args = ["tune", "example:digits", "--data", "example:digits:test", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--mlflow-uri", "file:///tmp/x"])
    assert result.exit_code == 2, result.output
    assert "MLFLOW_ALLOW_FILE_STORE=true" in " ".join(result.output.split())
    assert not (tmp_path / "tune-pareto.png").exists()


@pytest.mark.slow
def test_tune_logs_the_winner_to_mlflow(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    args = ["tune", "example:digits", "--data", "example:digits:test", "--runtimes", "onnx"]
    args += ["--max-drop", "5%", "--out", str(out), "--mlflow"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("slimserve")
    (run,) = client.search_runs([experiment.experiment_id])
    best = result.output.split("Best: ")[1].split(". Recipe")[0]
    assert run.data.tags["slimserve.tune.best"] == best
    assert "final.accuracy" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"best-recipe.yaml", "tune-pareto.png", "artifact"} <= files
    assert client.search_model_versions("name='tuned'")
