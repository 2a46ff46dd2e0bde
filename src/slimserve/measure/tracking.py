"""MLflow tracking (extra ``[mlflow]``): a run's recipe, metrics, report and artifact,
with the ONNX model registered. The default store is a SQLite file in the run folder,
so no server is needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from slimserve.core.errors import SlimserveError, require

EXPERIMENT = "slimserve"
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
"""Tracking-URI schemes MLflow stores runs in (``file`` aside; a ``+driver`` suffix is
allowed, as in ``postgresql+psycopg2``)."""


def default_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def check_uri(uri: str | None) -> None:
    """Refuse, before any work starts, a tracking URI that MLflow would refuse only when
    the run is logged at the end: a missing extra, a file store MLflow 3 no longer accepts
    without ``MLFLOW_ALLOW_FILE_STORE=true``, a scheme no store speaks."""
    require("mlflow", "mlflow", "MLflow tracking (--mlflow)")
    if uri is None:
        return  # the default, a SQLite file in the output folder
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file") and not _file_store_allowed():
        raise SlimserveError(
            f"--mlflow-uri {uri}: MLflow refuses a file store unless "
            "MLFLOW_ALLOW_FILE_STORE=true, and would fail only after the whole run. Use "
            "sqlite:///PATH/mlflow.db (the default, without --mlflow-uri, is OUT/mlflow.db), "
            "a tracking server (http://HOST:5000), or set MLFLOW_ALLOW_FILE_STORE=true."
        )
    if scheme not in ("", "file", *STORE_SCHEMES):
        raise SlimserveError(
            f"--mlflow-uri {uri}: MLflow has no tracking store for '{scheme}:'. Use "
            f"sqlite:///PATH/mlflow.db or one of {', '.join(STORE_SCHEMES)}."
        )


def _file_store_allowed() -> bool:
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # an MLflow from before the file store was refused
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())  # type: ignore[no-untyped-call]


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested recipe -> {'steps.0.quantize.mode': 'static', ...} (MLflow params are flat)."""
    if isinstance(value, dict):
        items: dict[str, str] = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}{key}."))
        return items
    if isinstance(value, list):
        items = {}
        for index, inner in enumerate(value):
            items.update(_flatten(inner, f"{prefix}{index}."))
        return items
    if value is None:  # an unset option: MLflow would show the string "None"
        return {}
    return {prefix.rstrip("."): str(value)[:500]}


def _metric_name(text: str) -> str:
    """A stage name as an MLflow metric key: no spaces (they break MLflow's search
    syntax and its UI's column names)."""
    return "".join(c if c.isalnum() or c in "_-./" else "_" for c in text)


def log_run(
    result: Any,
    out: Path,
    uri: str | None = None,
    extra_files: Sequence[Path] = (),
    tags: dict[str, str] | None = None,
) -> str:
    """Log an optimize run (a RunResult) to MLflow, with ``extra_files`` (tune's
    best-recipe.yaml and Pareto plot) and ``tags``; returns the MLflow run id."""
    mlflow: Any = require("mlflow", "mlflow", "MLflow tracking (--mlflow)")
    uri = uri or default_uri(out)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(
            EXPERIMENT, artifact_location=(out / "mlartifacts").resolve().as_uri()
        )
    mlflow.set_experiment(EXPERIMENT)
    manifest = result.artifact.manifest
    with mlflow.start_run(run_name=manifest.name) as run:
        mlflow.log_params(_flatten(manifest.recipe))
        if tags:
            mlflow.set_tags(tags)
        for path in extra_files:
            mlflow.log_artifact(str(path))
        for index, stage in enumerate(result.stages):
            prefix = _metric_name(f"{index}.{stage.name}")
            metrics = {f"{prefix}.{k}": v for k, v in stage.metrics.items()}
            metrics[f"{prefix}.size_bytes"] = float(stage.size_bytes)
            for batch, timing in stage.timings.items():
                metrics[f"{prefix}.b{batch}.p50_ms"] = timing["p50_ms"]
                metrics[f"{prefix}.b{batch}.items_per_s"] = timing["items_per_s"]
            mlflow.log_metrics(metrics)
        mlflow.log_metrics({f"final.{k}": v for k, v in manifest.final.items()})
        mlflow.log_artifacts(str(result.artifact.path), artifact_path="artifact")
        mlflow.onnx.log_model(
            onnx_model=result.artifact.model.proto,
            name="model",
            registered_model_name=manifest.name,
        )
        run_id: str = run.info.run_id
    return run_id
