"""Run a recipe: load, baseline, each step in order, bench every stage, save an artifact."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.core.context import Context, StepLog
from slimserve.stages import (
    Candidate,
    Stage,
    bench_stages,
    choose_serving,
    goal_verdict,
    openvino_stage,
    outputs,
    quality,
    torch_program_stage,
)

if TYPE_CHECKING:
    from rich.console import Console

    from slimserve.artifact import Artifact
    from slimserve.data import Dataset
    from slimserve.models import Model
    from slimserve.recipe import Recipe
    from slimserve.techniques import Technique


@dataclass
class RunResult:
    artifact: Artifact
    stages: list[Stage]
    notes: list[str]


def run_recipe(recipe: Recipe, out_dir: str | Path, console: Console | None = None) -> RunResult:
    """Run every step of ``recipe`` and save the artifact to ``out_dir/<recipe.name>``."""
    from slimserve.artifact import Manifest, SourceRecord, StepRecord, save_artifact
    from slimserve.core.cpu import cpu_features
    from slimserve.core.errors import MissingExtraError
    from slimserve.core.version import __version__
    from slimserve.loading import load as load_model
    from slimserve.loading import source_record
    from slimserve.measure.report import build_report
    from slimserve.measure.summary import model_bytes
    from slimserve.models import OnnxModel
    from slimserve.models.onnx import describe_io
    from slimserve.models.onnx import precision as onnx_precision
    from slimserve.recipe import plan_chains, shared_length
    from slimserve.runtime.openvino import precision_name

    out = Path(out_dir)
    chains = plan_chains(recipe)
    shared = shared_length(chains)
    threads = recipe.bench.threads
    total = shared + sum(len(c) - shared for c in chains)
    with _progress(console, total + 3) as advance:
        advance("loading data")
        data = recipe_data(recipe)
        advance("loading model")
        model = load_model(recipe.model)
        model = with_example_inputs(model, data)
        eval_data = _eval_split(data, model)
        baseline = Stage("baseline", model)
        reference = outputs(model, eval_data, threads) if eval_data is not None else None
        baseline.metrics = quality(model, eval_data, None, threads)
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
        notes: list[str] = []

        def run_steps(
            steps: tuple[Any, ...], current: Model, prefix: str = ""
        ) -> tuple[Model, list[Any]]:
            records = []
            for step in steps:
                advance(f"step {step.name}")
                started = time.perf_counter()
                source = copy.deepcopy(current) if current.format == "torch" else current
                log = StepLog()
                current = step.apply(source, replace(ctx, log=log))
                duration = time.perf_counter() - started
                notes.extend(n for n in log.notes if n not in notes)
                stage = Stage(_stage_name(step, [s.name for s in stages], prefix), current)
                stage.metrics = quality(current, eval_data, reference, threads)
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
            return current, records

        common, common_records = run_steps(chains[0][:shared], model)
        common_stages = list(stages)
        ends: list[tuple[OnnxModel, Stage, list[Any]]] = []  # each chain's ONNX model
        for number, chain in enumerate(chains):
            try:
                prefix = f"alt {number + 1}: " if len(chains) > 1 else ""
                end, records = run_steps(chain[shared:], common, prefix)
            except MissingExtraError as exc:
                if len(chains) == 1 or (number == len(chains) - 1 and not ends):
                    raise
                notes.append(f"Alternative {number + 1} was not tried: {exc}")
                continue
            assert isinstance(end, OnnxModel)
            end_stage = next(s for s in reversed(stages) if s.model is end)
            ends.append((end, end_stage, common_records + records))
        candidates = [Candidate("onnx", stage, i) for i, (_, stage, _) in enumerate(ends)]
        first = candidates[0]
        if "onnx" not in recipe.runtimes.candidates:
            candidates = []
        program = None
        if "torch" in recipe.runtimes.candidates:
            advance("torch program")
            program = torch_program_stage(
                recipe, common_stages, eval_data, reference, threads, notes
            )
            if program is not None:
                stages.append(program[0])
                candidates.append(Candidate("torch", program[0]))
        if "openvino" in recipe.runtimes.candidates:
            advance("OpenVINO")
            for i, (end, end_stage, _) in enumerate(ends):
                label = end_stage.name if len(ends) > 1 else ""
                ov = openvino_stage(recipe, end, eval_data, reference, threads, notes, label)
                if ov is not None:
                    stages.append(ov)
                    candidates.append(Candidate("openvino", ov, i))
        advance("benchmarking every stage")
        bench_stages(stages, eval_data, recipe)
    chosen, why = choose_serving(recipe, baseline, candidates or [first], first)
    runtime = chosen.runtime
    served = chosen.stage
    current, _, records = ends[chosen.chain]
    if len(ends) > 1:
        why += (
            f" {len(ends)} alternatives were tried on this machine (CPU flags: "
            f"{', '.join(sorted(cpu_features())) or 'none of note'}); every one is a stage "
            "of the report."
        )
    notes = [goal_verdict(recipe, stages[0], served).describe(), *([why] if why else []), *notes]
    manifest = Manifest(
        name=recipe.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        slimserve_version=__version__,
        source=SourceRecord(
            spec=source_record(recipe.model),
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
        runtime_precision=recipe.runtimes.openvino_precision if runtime == "openvino" else None,
        precision=(
            served.name.removeprefix("torch program ")
            if runtime == "torch"
            else precision_name(
                served.name.removeprefix("openvino "), onnx_precision(current.proto)
            )
            if runtime == "openvino"
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
    if not console.is_terminal:  # CI logs, pipes: a line per stage, elapsed and time left
        from slimserve.core.progress import plain_reporter

        report = plain_reporter(lambda line: console.print(line, highlight=False), "optimize")
        stage = [0]

        def advance_plain(message: str, fraction: float | None = None) -> None:
            if fraction is None:
                stage[0] += 1
            report(f"[{stage[0]}/{total}] {message}", (stage[0] - 1 + (fraction or 0)) / total)

        yield advance_plain
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


def _stage_name(step: Technique, taken: list[str], prefix: str = "") -> str:
    """The step's own label (after ``prefix``: which alternative); unique within the run."""
    name = prefix + step.describe()
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
