"""Run a recipe: load, baseline, each step in order, bench every stage, save an artifact."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.core.context import Context
from slimserve.core.progress import stage_progress
from slimserve.serving_runtime import Candidate, choose_serving_runtime, goal_verdict
from slimserve.small_batches import SmallBatches, choose_small_batches
from slimserve.stages import (
    RunResult,
    Stage,
    bench_stages,
    manifest_basics,
    openvino_stage,
    outputs,
    quality,
    stage_name,
    torch_program_stage,
)
from slimserve.steps import StepRun, run_steps

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from slimserve.artifact import Artifact, StepRecord
    from slimserve.data import Dataset
    from slimserve.models import Model, OnnxModel
    from slimserve.models.edge import EdgeModel
    from slimserve.recipe import Recipe
    from slimserve.techniques import Technique


@dataclass
class ChainEnd:
    """Where one chain of steps (the recipe's steps, or one alternative) ended: its ONNX
    model, that model's stage, and the records of every step that led there."""

    model: OnnxModel | EdgeModel
    stage: Stage
    records: list[StepRecord]


@dataclass
class Run:
    """What running a recipe's steps gave, before the choice of what serves."""

    source: Model
    eval_data: Dataset | None
    reference: np.ndarray | None  # the source model's outputs on eval_data
    stages: list[Stage]
    notes: list[str]
    shared_stages: int = 1  # the baseline and the steps every chain shares
    ends: list[ChainEnd] = field(default_factory=list)
    # What may serve: each chain's ONNX model in ONNX Runtime (the first is the
    # reference the others are compared with), then the runtime stages.
    onnx: list[Candidate] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    program: tuple[Stage, bytes] | None = None  # the torch program's stage and file


DEVICES = ("litert", "executorch")


def run_recipe(recipe: Recipe, out_dir: str | Path, console: Console | None = None) -> RunResult:
    """Run every step of ``recipe`` and save the artifact to ``out_dir/<recipe.name>``:
    plan the chains of steps, run them, choose the serving runtime, record the artifact."""
    from slimserve.recipe import plan_chains, shared_length

    if recipe.model.format == "causal_lm":  # measured as LMs are: llm_pipeline.py
        from slimserve.llm_pipeline import run_llm_recipe

        return run_llm_recipe(recipe, Path(out_dir), console)
    out = Path(out_dir)
    chains = plan_chains(recipe)
    shared = shared_length(chains)
    total = shared + sum(len(c) - shared for c in chains)
    with stage_progress(console, total + 4) as advance:
        run = run_chains(recipe, chains, out, advance)
        add_runtime_stages(recipe, run, advance)
        advance("benchmarking every stage")
        bench_stages(run.stages, run.eval_data, recipe)
        served = [c for c in run.onnx if c.runtime == "onnx"]  # device models are not served
        reference = served[0] if served else run.onnx[0]
        candidates = [c for c in run.candidates if not served or c.runtime not in DEVICES]
        candidates = candidates or [reference]
        chosen, why = choose_serving_runtime(recipe, run.stages[0], candidates, reference)
        if len(candidates) > 1:
            advance("small batches: timing the builds on probe batches")
        small, small_note = choose_small_batches(
            recipe, run.stages[0], chosen, candidates, run.eval_data
        )
    why = f"{why} {small_note}".strip()
    artifact = record_artifact(recipe, run, chosen, why, out, small)
    return RunResult(artifact, run.stages, artifact.manifest.notes)


def run_chains(
    recipe: Recipe, chains: tuple[tuple[Technique, ...], ...], out: Path, advance: Any
) -> Run:
    """Load the data and the model, score the baseline, run the steps the chains share
    once and each chain's own steps after them, scoring the model after every step."""
    from slimserve.core.errors import MissingExtraError
    from slimserve.loading import load_model
    from slimserve.models import OnnxModel
    from slimserve.recipe import shared_length

    threads = recipe.bench.threads
    advance("loading data")
    data = recipe_data(recipe)
    advance("loading model")
    model = with_example_inputs(load_model(recipe.model), data)
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
    run = Run(model, eval_data, reference, [baseline], [])
    records: list[StepRecord] = []
    prefix = [""]

    def done(step: StepRun) -> None:
        from slimserve.models import LlmModel

        assert not isinstance(step.model, LlmModel)  # decoder LMs run in llm_pipeline.py
        run.notes.extend(n for n in step.log.notes if n not in run.notes)
        stage = Stage(stage_name(step.step, [s.name for s in run.stages], prefix[0]), step.model)
        stage.metrics = quality(step.model, eval_data, reference, threads)
        run.stages.append(stage)
        records.append(step.record(stage.metrics))

    def starting(step: Technique) -> None:
        advance(f"step {step.name}")

    shared = shared_length(chains)
    common = run_steps(chains[0][:shared], model, ctx, starting, done)
    common_records = list(records)
    run.shared_stages = len(run.stages)
    for number, chain in enumerate(chains):
        prefix[0] = f"alt {number + 1}: " if len(chains) > 1 else ""
        del records[len(common_records) :]
        try:
            end = run_steps(chain[shared:], common, ctx, starting, done)
        except MissingExtraError as exc:
            if len(chains) == 1 or (number == len(chains) - 1 and not run.ends):
                raise
            run.notes.append(f"Alternative {number + 1} was not tried: {exc}")
            continue
        from slimserve.models.edge import EdgeModel

        assert isinstance(end, (OnnxModel, EdgeModel))
        end_stage = next(s for s in reversed(run.stages) if s.model is end)
        run.ends.append(ChainEnd(end, end_stage, list(records)))
    run.onnx = [Candidate(_runtime_of(e.model), e.stage, i) for i, e in enumerate(run.ends)]
    if "onnx" in recipe.runtimes.candidates or any(c.runtime != "onnx" for c in run.onnx):
        run.candidates = list(run.onnx)
    return run


def _runtime_of(model: OnnxModel | EdgeModel) -> Any:
    """What runs a chain's end: ONNX Runtime, or LiteRT / ExecuTorch for a device model."""
    return "onnx" if model.format == "onnx" else model.format


def add_runtime_stages(recipe: Recipe, run: Run, advance: Any) -> None:
    """The other runtimes that may serve, each a stage scored like the steps: the last
    PyTorch model as a torch program, each chain's ONNX model in OpenVINO."""
    threads, eval_data, reference = recipe.bench.threads, run.eval_data, run.reference
    if "torch" in recipe.runtimes.candidates:
        advance("torch program")
        shared = run.stages[: run.shared_stages]
        run.program = torch_program_stage(recipe, shared, eval_data, reference, threads, run.notes)
        if run.program is not None:
            run.stages.append(run.program[0])
            run.candidates.append(Candidate("torch", run.program[0]))
    if "openvino" in recipe.runtimes.candidates:
        from slimserve.models import OnnxModel

        advance("OpenVINO")
        for i, end in enumerate(run.ends):
            if not isinstance(end.model, OnnxModel):  # a device model runs in its own runtime
                continue
            label = end.stage.name if len(run.ends) > 1 else ""
            ov = openvino_stage(recipe, end.model, eval_data, reference, threads, run.notes, label)
            if ov is not None:
                run.stages.append(ov)
                run.candidates.append(Candidate("openvino", ov, i))


def record_artifact(
    recipe: Recipe,
    run: Run,
    chosen: Candidate,
    why: str,
    out: Path,
    small: SmallBatches | None = None,
) -> Artifact:
    """Save the chosen runtime's model with its manifest, report and extra files (and
    the executable for small batches, when one was chosen)."""
    from slimserve.artifact import Manifest, save_artifact
    from slimserve.core.cpu import cpu_features
    from slimserve.measure.report import build_report
    from slimserve.measure.summary import model_bytes

    end = run.ends[chosen.chain]
    if len(run.ends) > 1:
        why += (
            f" {len(run.ends)} alternatives were tried on this machine (CPU flags: "
            f"{', '.join(sorted(cpu_features())) or 'none of note'}); every one is a stage "
            "of the report."
        )
    served, baseline = chosen.stage, run.stages[0]
    verdict = goal_verdict(recipe, baseline, served).describe()
    notes = [verdict, *([why] if why else []), *run.notes]
    manifest = Manifest(
        **manifest_basics(recipe, _sha256(model_bytes(run.source))),
        parent=str(recipe.model.path) if recipe.model.path and recipe.model.path.is_dir() else None,
        steps=end.records,
        io=_io(end.model, run.source),
        baseline=baseline.metrics,
        final=served.metrics,
        stages=[s.row() for s in run.stages],
        notes=notes,
        runtime=chosen.runtime,
        runtime_precision=(
            recipe.runtimes.openvino_precision if chosen.runtime == "openvino" else None
        ),
        precision=served_precision(chosen, end.model),
    )
    files: dict[str, bytes] = {}
    hf_folder = getattr(run.source, "hf_folder", None)
    if hf_folder is not None:  # a text model: its tokenizer travels with it
        from slimserve.models.hf import text_record, tokenizer_files

        manifest = manifest.model_copy(update={"text": text_record(hf_folder, recipe.model.task)})
        files = tokenizer_files(hf_folder)
    if run.program is not None:
        from slimserve.artifact import PROGRAM_FILE

        files[PROGRAM_FILE] = run.program[1]
    if small is not None:  # the same chain's model in another runtime reads model.onnx
        from slimserve.artifact import MODEL_FILE

        file = MODEL_FILE if small.candidate.chain == chosen.chain else "small/model.onnx"
        if file != MODEL_FILE:
            files[file] = small.candidate.stage.model.to_bytes()  # type: ignore[union-attr]
        record = small.record(file, recipe.runtimes.openvino_precision)
        manifest = manifest.model_copy(update={"small_batches": record})
    files.update(build_report(manifest))
    return save_artifact(out / recipe.name, end.model, manifest, files)


def _io(model: OnnxModel | EdgeModel, source: Model) -> dict[str, Any]:
    """The served model's inputs and outputs: from the ONNX graph, or for a device model
    from the source model's names and example inputs (its batch axis fixed at 1)."""
    from slimserve.models import OnnxModel
    from slimserve.models.onnx import describe_io

    if isinstance(model, OnnxModel):
        return describe_io(model.proto)
    examples = getattr(source, "example_inputs", None) or ()
    inputs = [
        {"name": n, "dtype": str(x.dtype).removeprefix("torch."), "shape": [1, *x.shape[1:]]}
        for n, x in zip(model.input_names, examples, strict=False)
    ]
    outputs = [{"name": n, "dtype": "float32", "shape": [1]} for n in model.output_names]
    return {"inputs": inputs, "outputs": outputs}


def served_precision(chosen: Candidate, model: OnnxModel | EdgeModel) -> str:
    """The precision the artifact is served in: the torch program's dtype, OpenVINO's
    inference precision on the ONNX model's, or the ONNX model's own."""
    from slimserve.models import OnnxModel
    from slimserve.models.onnx import precision
    from slimserve.runtime.openvino import precision_name

    if not isinstance(model, OnnxModel):
        return model.precision

    if chosen.runtime == "torch":
        return chosen.stage.name.removeprefix("torch program ")
    if chosen.runtime == "openvino":
        return precision_name(chosen.stage.name.removeprefix("openvino "), precision(model.proto))
    return precision(model.proto)


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
    from slimserve.core.files import sha256_bytes

    return sha256_bytes(data)
