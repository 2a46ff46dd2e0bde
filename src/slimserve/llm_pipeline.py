"""Run a recipe on a decoder LM: the same plan and step loop as every recipe, measured as
the field measures LMs (perplexity, KL divergence and top-1 agreement against the float
model on the same held-out tokens, decode tokens/s interleaved), and the artifact holds
the fastest built model that meets the goal, with its tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.core.context import Context
from slimserve.core.progress import stage_progress
from slimserve.stages import RunResult, Stage, manifest_basics, stage_name
from slimserve.steps import StepRun, run_steps

if TYPE_CHECKING:
    from rich.console import Console

    from slimserve.artifact import Artifact, StepRecord
    from slimserve.measure.llm import Reference
    from slimserve.models import AnyModel
    from slimserve.models.llm import LlmModel
    from slimserve.models.torch import TorchModel
    from slimserve.recipe import Recipe

DECODE_TOKENS = 64
DECODE_PROMPT = "Write a short paragraph about how models are made ready for serving."


def run_llm_recipe(recipe: Recipe, out: Path, console: Console | None = None) -> RunResult:
    """Every chain of the recipe's steps on the decoder LM, each built model measured,
    the fastest within the goal saved as the artifact ``out/<recipe.name>``."""
    from slimserve.core.errors import MissingExtraError
    from slimserve.llm_prefill import choose_llm_prefill
    from slimserve.loading import causal_lm_folder
    from slimserve.measure.llm import eval_text, reference_for, token_windows, window_length
    from slimserve.models.causal_lm import load_causal_lm
    from slimserve.models.hf import load_tokenizer
    from slimserve.models.llm import LlmModel
    from slimserve.recipe import plan_chains

    chains = plan_chains(recipe)
    threads = recipe.bench.threads
    with stage_progress(console, sum(len(c) for c in chains) + 4) as advance:
        advance("loading data")
        spec = recipe.data.eval
        if spec is None:
            from slimserve.core.errors import DataError

            raise DataError(
                "A decoder LM is measured on held-out prose: add data.eval, e.g. "
                "{example: english, split: other}."
            )
        text, source = eval_text(spec)
        advance("loading model")
        model = load_causal_lm(causal_lm_folder(recipe.model))
        assert model.hf_folder is not None
        tokenizer = load_tokenizer(model.hf_folder)
        window = window_length(spec)
        windows = token_windows(tokenizer(text)["input_ids"], window, spec.samples)
        reference = reference_for(model, windows)
        baseline = Stage("baseline (transformers float32)", model)
        baseline.metrics = _quality(model, reference, threads)
        stages, notes = [baseline], [_eval_note(windows, window, source)]
        calibration, calibration_note = _calibration(recipe, chains)
        train, train_note = _training_text(recipe, chains)
        notes.extend(n for n in (calibration_note, train_note) if n)
        ctx = Context(
            data={},
            reference=model,
            seed=recipe.seed,
            threads=threads,
            calibration_text=calibration,
            train_text=train,
        )
        ends: list[tuple[LlmModel, Stage, list[StepRecord]]] = []
        for number, chain in enumerate(chains):
            prefix = f"alt {number + 1}: " if len(chains) > 1 else ""
            records: list[StepRecord] = []
            done = _recorder(stages, records, reference, threads, prefix, notes)
            try:
                end = run_steps(chain, model, ctx, lambda s: advance(f"step {s.name}"), done)
            except MissingExtraError:
                raise
            assert isinstance(end, LlmModel)
            ends.append((end, stages[-1], records))
        advance("decode speed, interleaved")
        _decode_speeds(stages, tokenizer, recipe, threads)
        notes.extend(_why_int4_got_worse(recipe, model, reference, baseline, ends))
    chosen, why = _choose(recipe, baseline, ends)
    prefill, prefill_note = choose_llm_prefill(
        recipe, baseline, ends[chosen][1], ends[chosen][0], reference, threads
    )
    artifact = _record(
        recipe, model, stages, ends[chosen], [why, prefill_note, *notes], out, prefill
    )
    return RunResult(artifact, stages, artifact.manifest.notes)


def _calibration(recipe: Recipe, chains: Any) -> tuple[str, str]:
    """The calibration prose (data.calibration, else Python's documentation) when a step
    learns from text (AWQ, scale estimation, the int4 share, depth and width pruning's
    importance), and the report's line on it."""
    if not any(
        getattr(step, "uses_nncf", False) or getattr(step, "uses_calibration", False)
        for chain in chains
        for step in chain
    ):
        return "", ""
    text, source = _held_out_text(recipe, "calibration")
    return text, f"Calibration (pruning importance, AWQ, scale estimation, int4 share): {source}."


def _training_text(recipe: Recipe, chains: Any) -> tuple[str, str]:
    """The training prose (data.train, else Python's documentation's train split) when a
    step trains on text (distillation), and the report's line on it."""
    if not any(getattr(step, "uses_train_text", False) for chain in chains for step in chain):
        return "", ""
    text, source = _held_out_text(recipe, "train")
    return text, f"Distillation's training text: {source}."


def _held_out_text(recipe: Recipe, split: str) -> tuple[str, str]:
    """``data.<split>`` (Python's documentation's split by default), refused when it names
    the eval text."""
    from slimserve.core.errors import DataError
    from slimserve.core.specs import DataSpec
    from slimserve.measure.llm import eval_text

    spec = getattr(recipe.data, split) or DataSpec(example="english", split=split)
    if spec == recipe.data.eval:
        raise DataError(
            f"data.{split} and data.eval name the same text: a decoder LM's quality is "
            f"measured on prose its {split} text did not hold; give them different sources."
        )
    return eval_text(spec)


def _why_int4_got_worse(
    recipe: Recipe,
    model: TorchModel,
    reference: Reference,
    baseline: Stage,
    ends: list[tuple[LlmModel, Stage, list[StepRecord]]],
) -> list[str]:
    """When an int4 build misses the goal: the layers whose int4 alone costs most."""
    from slimserve.measure.llm_sensitivity import diagnosis, layer_sensitivity
    from slimserve.serving_runtime import goal_verdict

    for llm, stage, records in ends:
        if llm.weights != "int4" or goal_verdict(recipe, baseline, stage).met or not records:
            continue
        config = records[-1].config
        group_size, symmetric = (
            int(config.get("group_size", 32)),
            bool(config.get("symmetric", True)),
        )
        try:
            ranked = layer_sensitivity(model, reference, group_size, symmetric)
        except AttributeError:  # not a model.layers decoder: no per-layer diagnosis
            return []
        return [diagnosis(ranked)] if ranked else []
    return []


def _quality(model: AnyModel, reference: Reference, threads: int) -> dict[str, float]:
    from slimserve.measure.llm import llm_quality

    return llm_quality(model, reference, threads)


def _eval_note(windows: list[list[int]], window: int, source: str) -> str:
    return (
        f"Quality on {len(windows)} windows of {window} tokens of {source} (held out from "
        "any calibration text), against the float model's next-token distributions on the "
        "same tokens."
    )


def _recorder(
    stages: list[Stage],
    records: list[StepRecord],
    reference: Reference,
    threads: int,
    prefix: str,
    notes: list[str],
) -> Any:
    def done(step: StepRun) -> None:
        notes.extend(n for n in step.log.notes if n not in notes)
        stage = Stage(stage_name(step.step, [s.name for s in stages], prefix), step.model)
        stage.metrics = _quality(step.model, reference, threads)
        stages.append(stage)
        records.append(step.record(stage.metrics))

    return done


def _decode_speeds(stages: list[Stage], tokenizer: Any, recipe: Recipe, threads: int) -> None:
    from slimserve.measure.llm import decode_speed

    prompt = list(tokenizer(DECODE_PROMPT)["input_ids"])
    rounds = max(3, min(recipe.bench.repeats, 7))
    speeds = decode_speed({s.name: s.model for s in stages}, prompt, DECODE_TOKENS, rounds, threads)
    for stage in stages:
        stage.metrics.update(speeds[stage.name])
        stage.size_bytes = _size(stage.model)
        stage.compressed_bytes = stage.size_bytes


def _size(model: AnyModel) -> int:
    if model.format == "llm":
        return int(model.size_bytes())  # type: ignore[union-attr]
    module: Any = model.module  # type: ignore[union-attr]
    return sum(int(p.numel() * p.element_size()) for p in module.parameters())


def _choose(
    recipe: Recipe, baseline: Stage, ends: list[tuple[LlmModel, Stage, list[StepRecord]]]
) -> tuple[int, str]:
    """The fastest built model that meets the goal (the first when none does), and why."""
    from slimserve.serving_runtime import goal_verdict

    def speed(index: int) -> float:
        return float(ends[index][1].metrics.get("decode_tokens_per_s", 0.0))

    meets = [i for i, (_, stage, _) in enumerate(ends) if goal_verdict(recipe, baseline, stage).met]
    if not meets:
        return 0, (
            f"No built model meets the goal ({recipe.goal.metric} within "
            f"{recipe.goal.max_drop:g}); the artifact holds the first, {ends[0][1].name}."
        )
    best = max(meets, key=speed)
    if len(ends) == 1:
        return best, f"Built {ends[best][1].name} for onnxruntime-genai."
    ratios = ", ".join(f"{ends[i][1].name} {speed(i):,.1f} tok/s" for i in range(len(ends)))
    return best, (
        f"Serving {ends[best][1].name}, the fastest decode of the {len(meets)} of "
        f"{len(ends)} built models that meet the goal (decode at batch 1, same run: {ratios})."
    )


def _record(
    recipe: Recipe,
    model: TorchModel,
    stages: list[Stage],
    chosen: tuple[LlmModel, Stage, list[StepRecord]],
    notes: list[str],
    out: Path,
    prefill: dict[str, Any] | None = None,
) -> Artifact:
    from slimserve.artifact import GENAI_RUNTIME, LLM_DIR, Manifest, save_artifact
    from slimserve.core.files import sha256_file
    from slimserve.measure.report import build_report
    from slimserve.serving_runtime import goal_verdict

    llm, served, records = chosen
    assert model.hf_folder is not None
    weights = sorted(model.hf_folder.glob("*.safetensors"))
    io = {
        "inputs": [{"name": "input_ids", "dtype": "int32", "shape": ["batch", "sequence"]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": ["batch", "sequence", "vocab"]}
        ],
    }
    manifest = Manifest(
        **manifest_basics(recipe, sha256_file(weights[0]) if len(weights) == 1 else None),
        steps=records,
        io=io,
        baseline=stages[0].metrics,
        final=served.metrics,
        stages=[s.row() for s in stages],
        notes=[goal_verdict(recipe, stages[0], served).describe(), *notes],
        runtime=GENAI_RUNTIME,
        llm_prefill=prefill,
        precision=llm.weights,
        text={
            "tokenizer": LLM_DIR,
            "task": "text-generation",
            "max_length": int(llm.config()["model"]["context_length"]),
            "chat_template": (llm.folder / "chat_template.jinja").is_file(),
        },
    )
    return save_artifact(out / recipe.name, llm, manifest, build_report(manifest))
