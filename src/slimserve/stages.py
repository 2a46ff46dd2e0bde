"""The stages of a run: the model after each step (and the runtimes that may serve the
last one), each scored and timed in one interleaved run. Which of them serves is
``serving_runtime.py``'s choice."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slimserve.core.errors import DataError

if TYPE_CHECKING:
    from slimserve.artifact import Artifact
    from slimserve.data import Dataset
    from slimserve.models import AnyModel, Model, OnnxModel
    from slimserve.recipe import Recipe
    from slimserve.techniques import Technique


@dataclass
class Stage:
    """One point of the comparison: the baseline or the model after a step."""

    name: str
    model: AnyModel
    metrics: dict[str, float] = field(default_factory=dict)
    size_bytes: int = 0
    compressed_bytes: int = 0
    timings: dict[int, dict[str, float]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "format": self.model.format,
            "metrics": self.metrics,
            "size_bytes": self.size_bytes,
            "compressed_bytes": self.compressed_bytes,
            "timings": {str(b): t for b, t in self.timings.items()},
        }


@dataclass
class RunResult:
    """What ``run_recipe`` gives: the artifact, every stage measured, the run's notes."""

    artifact: Artifact
    stages: list[Stage]
    notes: list[str]


def outputs(model: Model, data: Dataset, threads: int) -> np.ndarray:
    from slimserve.runtime import load_predictor, predict_all

    return predict_all(load_predictor(model, threads), data)


def quality(
    model: Model, data: Dataset | None, reference: np.ndarray | None, threads: int
) -> dict[str, float]:
    if data is None:
        return {}
    from slimserve.measure.evaluate import evaluate
    from slimserve.runtime import load_predictor

    try:
        return evaluate(load_predictor(model, threads), data, reference)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"Running the model on the eval data failed: {exc}. Check that the data "
            "matches the model's inputs (shape and dtype)."
        ) from exc


def predictable(model: AnyModel) -> Model:
    """A model a predictor runs (a decoder LM's stages are measured in llm_pipeline.py)."""
    from slimserve.models.llm import LlmModel

    assert not isinstance(model, LlmModel)
    return model


def bench_stages(stages: list[Stage], data: Dataset | None, recipe: Recipe) -> None:
    from slimserve.measure.bench import bench_interleaved
    from slimserve.measure.summary import model_size
    from slimserve.measure.timing import TIMED_SPINNING
    from slimserve.runtime import load_predictor

    models = {s.name: predictable(s.model) for s in stages}
    for stage in stages:
        stage.size_bytes, stage.compressed_bytes = model_size(models[stage.name])
    if data is None:
        return
    predictors = {
        name: load_predictor(model, recipe.bench.threads, spinning=TIMED_SPINNING)
        for name, model in models.items()
    }
    timings = bench_interleaved(
        predictors, data, recipe.bench.batch_sizes, recipe.bench.warmup, recipe.bench.repeats
    )
    for stage in stages:
        stage.timings = {b: t.as_dict() for b, t in timings[stage.name].items()}


def torch_program_stage(
    recipe: Recipe,
    stages: list[Stage],
    eval_data: Dataset | None,
    reference: np.ndarray | None,
    threads: int,
    notes: list[str],
) -> tuple[Stage, bytes] | None:
    """The last PyTorch stage of ``stages`` as a ``torch.export`` program: a stage timed
    with the rest (the caller adds it to the run's stages)."""
    from slimserve.core.errors import ExportError
    from slimserve.models import TorchModel
    from slimserve.techniques.torch_program import export_program, resolve_dtype

    source = next((s.model for s in reversed(stages) if isinstance(s.model, TorchModel)), None)
    if source is None:
        notes.append(
            "No torch program: the source model is ONNX, so there is nothing to run in PyTorch."
        )
        return None
    dtype, warning = resolve_dtype(recipe.runtimes.torch_dtype)
    if warning:
        notes.append(warning)
    try:
        model, data = export_program(source, dtype)
    except ExportError as exc:
        if recipe.runtimes.candidates == ("torch",):
            raise
        notes.append(f"No torch program: {exc}")
        return None
    label = str(dtype).removeprefix("torch.")
    stage = Stage(f"torch program {label}", model)
    stage.metrics = quality(model, eval_data, reference, threads)
    return stage, data


def openvino_stage(
    recipe: Recipe,
    current: OnnxModel,
    eval_data: Dataset | None,
    reference: np.ndarray | None,
    threads: int,
    notes: list[str],
    label: str = "",
) -> Stage | None:
    """The final ONNX model run by OpenVINO: a stage timed with the rest."""
    from slimserve.core.errors import MissingExtraError, ModelLoadError
    from slimserve.runtime.openvino import OvPredictor

    precision = recipe.runtimes.openvino_precision
    engine: Literal["openvino", "openvino-f32"] = (
        "openvino-f32" if precision == "f32" else "openvino"
    )
    model = replace(current, engine=engine)
    try:
        predictor = OvPredictor(model, threads, precision)
    except (ModelLoadError, MissingExtraError) as exc:
        if recipe.runtimes.candidates == ("openvino",) and not recipe.alternatives:
            raise
        notes.append(f"No OpenVINO stage{f' for {label}' if label else ''}: {exc}")
        return None
    name = f"openvino {predictor.inference_precision}"
    stage = Stage(f"{label}, {name}" if label else name, model)
    stage.metrics = quality(model, eval_data, reference, threads)
    return stage


def stage_name(step: Technique, taken: list[str], prefix: str = "") -> str:
    """The step's own label (after ``prefix``: which alternative); unique within the run."""
    name = prefix + step.describe()
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name} #{index}", index + 1
    return candidate


def package_versions() -> dict[str, str]:
    import sys
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    used = [m for m in ("transformers", "keras") if m in sys.modules]
    for name in ("slimserve", "torch", "onnx", "onnxruntime", "numpy", "pydantic", *used):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def manifest_basics(recipe: Recipe, source_sha256: str | None) -> dict[str, Any]:
    """What every artifact's manifest records of its run: name, time, versions, source,
    the resolved recipe, the packages and the CPU it was measured on."""
    from datetime import datetime, timezone

    from slimserve.artifact import SourceRecord
    from slimserve.core.cpu import cpu_features
    from slimserve.core.version import __version__
    from slimserve.loading import source_record

    return {
        "name": recipe.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "slimserve_version": __version__,
        "source": SourceRecord(spec=source_record(recipe.model), sha256=source_sha256),
        "recipe": recipe.resolved(),
        "packages": package_versions(),
        "cpu_features": sorted(cpu_features()),
    }
