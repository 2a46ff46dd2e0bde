"""Run a recipe: load, baseline, each step in order, bench every stage, save an artifact."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slimserve.core.context import Context, StepLog
from slimserve.core.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console

    from slimserve.artifact import Artifact
    from slimserve.data import Dataset
    from slimserve.measure.verdict import Verdict
    from slimserve.models import Model
    from slimserve.recipe import Recipe
    from slimserve.techniques import Technique


@dataclass
class Stage:
    """One point of the comparison: the baseline or the model after a step."""

    name: str
    model: Model
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
    artifact: Artifact
    stages: list[Stage]
    notes: list[str]


def run_recipe(recipe: Recipe, out_dir: str | Path, console: Console | None = None) -> RunResult:
    """Run every step of ``recipe`` and save the artifact to ``out_dir/<recipe.name>``."""
    from slimserve.artifact import Manifest, SourceRecord, StepRecord, save_artifact
    from slimserve.core.cpu import cpu_features
    from slimserve.core.version import __version__
    from slimserve.loading import load as load_model
    from slimserve.measure.report import build_report
    from slimserve.measure.summary import model_bytes
    from slimserve.models import OnnxModel
    from slimserve.models.onnx import describe_io
    from slimserve.models.onnx import precision as onnx_precision
    from slimserve.recipe import plan_steps

    out = Path(out_dir)
    steps = plan_steps(recipe.steps, recipe.model.format)
    threads = recipe.bench.threads
    with _progress(console, len(steps) + 3) as advance:
        advance("loading data")
        data = recipe_data(recipe)
        advance("loading model")
        model = load_model(recipe.model)
        model = with_example_inputs(model, data)
        eval_data = _eval_split(data, model)
        baseline = Stage("baseline", model)
        reference = _outputs(model, eval_data, threads) if eval_data is not None else None
        baseline.metrics = _quality(model, eval_data, None, threads)
        ctx = Context(
            data=data,
            reference=model,
            work_dir=out.parent if out.parent.exists() else Path("."),
            seed=recipe.seed,
            threads=threads,
            progress=lambda message, fraction: advance(message, fraction),
            goal_metric=recipe.goal.metric,
            max_drop=recipe.goal.max_drop,
        )
        stages = [baseline]
        records = []
        notes: list[str] = []
        current: Model = model
        for step in steps:
            advance(f"step {step.name}")
            started = time.perf_counter()
            source = copy.deepcopy(current) if current.format == "torch" else current
            log = StepLog()
            current = step.apply(source, replace(ctx, log=log))
            duration = time.perf_counter() - started
            notes.extend(log.notes)
            stage = Stage(_stage_name(step, [s.name for s in stages]), current)
            stage.metrics = _quality(current, eval_data, reference, threads)
            stages.append(stage)
            records.append(
                StepRecord(
                    name=step.name,
                    config=step.model_dump(mode="json"),
                    duration_s=round(duration, 3),
                    metrics=stage.metrics,
                    notes=log.notes,
                    details=log.details,
                )
            )
        program = None
        if "torch" in recipe.runtimes.candidates:
            advance("torch program")
            program = _torch_program(recipe, stages, eval_data, reference, threads, notes)
        advance("benchmarking every stage")
        _bench_stages(stages, eval_data, recipe)
    assert isinstance(current, OnnxModel)
    runtime, served = _choose_runtime(recipe, stages, program, notes)
    notes = [_verdict(recipe, stages[0], served).describe(), *notes]
    manifest = Manifest(
        name=recipe.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        slimserve_version=__version__,
        source=SourceRecord(
            spec=recipe.model.model_dump(mode="json", exclude_none=True),
            sha256=_sha256(model_bytes(model)),
        ),
        parent=str(recipe.model.path) if recipe.model.path and recipe.model.path.is_dir() else None,
        recipe=recipe.resolved(),
        steps=records,
        io=describe_io(current.proto),
        baseline=baseline.metrics,
        final=served.metrics,
        stages=[s.row() for s in stages],
        notes=notes,
        packages=_packages(),
        runtime=runtime,
        precision=(
            served.name.removeprefix("torch program ")
            if runtime == "torch"
            else onnx_precision(current.proto)
        ),
        cpu_features=sorted(cpu_features()),
    )
    files: dict[str, bytes] = {}
    hf_folder = getattr(model, "hf_folder", None)
    if hf_folder is not None:  # a text model: its tokenizer travels with it
        from slimserve.models.hf import text_record, tokenizer_files

        manifest = manifest.model_copy(update={"text": text_record(hf_folder, recipe.model.task)})
        files = tokenizer_files(hf_folder)
    if program is not None:
        from slimserve.artifact import PROGRAM_FILE

        files[PROGRAM_FILE] = program[1]
    files.update(build_report(manifest))
    artifact = save_artifact(out / recipe.name, current, manifest, files)
    return RunResult(artifact, stages, notes)


@contextmanager
def _progress(console: Console | None, total: int) -> Iterator[Any]:
    if console is None:
        yield lambda message, fraction=None: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=total)
        first = [True]

        def advance(message: str, fraction: float | None = None) -> None:
            """A new stage (fraction None) moves the bar; a step's own progress only
            updates the text (and the bar within the stage)."""
            if fraction is None:
                if not first[0]:
                    progress.update(task, completed=int(progress.tasks[0].completed) + 1)
                first[0] = False
                progress.update(task, description=message)
                return
            whole = int(progress.tasks[0].completed)
            progress.update(task, description=message, completed=whole + min(fraction, 0.99))

        yield advance
        progress.update(task, completed=total)


def _stage_name(step: Technique, taken: list[str]) -> str:
    """The step's own label if it has one; unique within the run."""
    name = step.describe()
    candidate, index = name, 2
    while candidate in taken:
        candidate, index = f"{name} #{index}", index + 1
    return candidate


def recipe_data(recipe: Recipe) -> dict[str, Dataset]:
    """The recipe's data splits; text is tokenized with the recipe's model's tokenizer."""
    from slimserve.data import load_data
    from slimserve.loading import tokenizer_folder

    specs = {
        split: spec
        for split in ("train", "calibration", "eval")
        if (spec := getattr(recipe.data, split)) is not None
    }
    folder = tokenizer_folder(recipe.model) if any(s.is_text for s in specs.values()) else None
    return {split: load_data(spec, folder) for split, spec in specs.items()}


def with_example_inputs(model: Model, data: dict[str, Dataset]) -> Model:
    """A torch model without example inputs gets two samples of the recipe's data."""
    from slimserve.models import TorchModel

    if not isinstance(model, TorchModel) or model.example_inputs is not None:
        return model
    source = data.get("calibration") or data.get("eval") or data.get("train")
    if source is None:
        return model
    import torch

    batch = source.renamed(model.input_names).take(2)
    inputs = tuple(torch.from_numpy(batch.inputs[n]) for n in model.input_names)
    return replace(model, example_inputs=inputs)


def _eval_split(data: dict[str, Dataset], model: Model) -> Dataset | None:
    split = data.get("eval") or data.get("calibration")
    return split.renamed(model.input_names) if split is not None else None


def _outputs(model: Model, data: Dataset, threads: int) -> np.ndarray:
    from slimserve.runtime import load, predict_all

    return predict_all(load(model, threads), data)


def _quality(
    model: Model, data: Dataset | None, reference: np.ndarray | None, threads: int
) -> dict[str, float]:
    if data is None:
        return {}
    from slimserve.measure.evaluate import evaluate
    from slimserve.runtime import load

    try:
        return evaluate(load(model, threads), data, reference)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"Running the model on the eval data failed: {exc}. Check that the data "
            "matches the model's inputs (shape and dtype)."
        ) from exc


def _bench_stages(stages: list[Stage], data: Dataset | None, recipe: Recipe) -> None:
    from slimserve.measure.bench import bench_interleaved
    from slimserve.measure.summary import model_size
    from slimserve.measure.timing import TIMED_SPINNING
    from slimserve.runtime import load

    for stage in stages:
        stage.size_bytes, stage.compressed_bytes = model_size(stage.model)
    if data is None:
        return
    predictors = {
        s.name: load(s.model, recipe.bench.threads, spinning=TIMED_SPINNING) for s in stages
    }
    timings = bench_interleaved(
        predictors, data, recipe.bench.batch_sizes, recipe.bench.warmup, recipe.bench.repeats
    )
    for stage in stages:
        stage.timings = {b: t.as_dict() for b, t in timings[stage.name].items()}


def _torch_program(
    recipe: Recipe,
    stages: list[Stage],
    eval_data: Dataset | None,
    reference: np.ndarray | None,
    threads: int,
    notes: list[str],
) -> tuple[Stage, bytes] | None:
    """The last PyTorch stage as a ``torch.export`` program: a stage timed with the rest."""
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
    stage.metrics = _quality(model, eval_data, reference, threads)
    stages.append(stage)
    return stage, data


def _choose_runtime(
    recipe: Recipe, stages: list[Stage], program: tuple[Stage, bytes] | None, notes: list[str]
) -> tuple[Literal["onnx", "torch"], Stage]:
    """Serve the torch program or the ONNX model: the faster at the largest bench batch
    among those that meet the goal (ONNX when neither or both cannot be compared)."""
    onnx_stage = next(s for s in reversed(stages) if s.model.format == "onnx")
    if program is None:
        return "onnx", onnx_stage
    torch_stage = program[0]
    if recipe.runtimes.candidates == ("torch",):
        return "torch", torch_stage
    batch = max(recipe.bench.batch_sizes)
    speed = {
        s.name: s.timings.get(batch, {}).get("items_per_s", 0.0) for s in (onnx_stage, torch_stage)
    }
    ok = {s.name: _verdict(recipe, stages[0], s).met for s in (onnx_stage, torch_stage)}
    ratio = speed[torch_stage.name] / speed[onnx_stage.name] if speed[onnx_stage.name] else 0.0
    if ok[torch_stage.name] and (ratio > 1.0 or not ok[onnx_stage.name]):
        notes.append(
            f"Serving the {torch_stage.name}: {ratio:.2f}x the ONNX model's batch-{batch} "
            "throughput, within the goal."
        )
        return "torch", torch_stage
    why = "misses the goal" if not ok[torch_stage.name] else f"is {ratio:.2f}x as fast"
    notes.append(
        f"Serving the ONNX model: the {torch_stage.name} {why} at batch {batch} "
        "(measured in the same run; the program is kept in the artifact as model.pt2)."
    )
    return "onnx", onnx_stage


def _verdict(recipe: Recipe, baseline: Stage, stage: Stage) -> Verdict:
    from slimserve.measure.verdict import verdict

    metric = recipe.goal.metric
    return verdict(
        metric, baseline.metrics.get(metric), stage.metrics.get(metric), recipe.goal.max_drop
    )


def _sha256(data: bytes) -> str:
    from slimserve.artifact import sha256_bytes

    return sha256_bytes(data)


def _packages() -> dict[str, str]:
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
