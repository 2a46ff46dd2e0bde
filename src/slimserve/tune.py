"""Accuracy-aware tuning: try configurations, keep the best one inside the tolerance.

Candidates run cheapest first (quantization modes and calibration methods, a torch
program of a PyTorch source, float32 or bf16 where the CPU has it, then
sensitivity fallback, then channel pruning with fine-tuning combined with int8), each
checked on a small slice of the eval data before the full evaluation (early rejection),
until the time budget is spent. The accepted ones are timed together in one
interleaved run; the winner is written as ``best-recipe.yaml`` and built as an artifact
with ``slimserve optimize``'s own code, so the recipe reproduces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from slimserve.core.context import Context
from slimserve.core.errors import SlimserveError

Objective = Literal["latency", "throughput", "size"]
QUICK_SAMPLES = 128


@dataclass(frozen=True)
class TuneSpec:
    """What to tune and within which limits."""

    model: dict[str, Any]
    data: dict[str, Any]
    max_drop: float = 0.01
    objective: Objective = "latency"
    budget_s: float = 600.0
    sparsities: tuple[float, ...] = (0.25, 0.5)
    runtimes: tuple[Literal["onnx", "torch"], ...] = ("onnx", "torch")


@dataclass
class Candidate:
    name: str
    steps: list[dict[str, Any]]
    techniques: int
    status: str = "pending"
    metric: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    items_per_s: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    model: Any = None
    runtimes: dict[str, Any] | None = None  # a recipe's runtimes section (torch program)
    timings: dict[int, Any] | None = None  # bench.Timing by batch size, from one run

    def objective(self, kind: Objective) -> float:
        if kind == "size":
            return float(self.size_bytes or 0)
        if kind == "throughput":
            return -float(self.items_per_s or 0)
        return float(self.latency_ms or 0)


@dataclass
class TuneResult:
    candidates: list[Candidate]
    best: Candidate | None
    baseline_metric: float
    metric: str
    explanation: list[str]
    run: Any = None


def candidate_list(
    model_format: str, has_linear: bool, has_train: bool, sparsities: tuple[float, ...]
) -> list[Candidate]:
    """Cheap single techniques first, then combinations."""
    static = {"quantize": {"mode": "static"}}
    items = [
        Candidate("fp32 (ONNX Runtime)", [], 0),
        Candidate("dynamic int8", [{"quantize": {"mode": "dynamic"}}], 1),
        Candidate("static int8, minmax", [static], 1),
        Candidate(
            "static int8, entropy",
            [{"quantize": {"mode": "static", "calibration": {"method": "entropy"}}}],
            1,
        ),
        Candidate(
            "static int8, percentile",
            [{"quantize": {"mode": "static", "calibration": {"method": "percentile"}}}],
            1,
        ),
        Candidate("fp16", [{"quantize": {"mode": "fp16"}}], 1),
    ]
    if model_format == "torch":
        from slimserve.techniques.torch_program import resolve_dtype

        dtype = str(resolve_dtype("auto")[0]).removeprefix("torch.")
        runtimes = {"candidates": ["torch"], "torch_dtype": "auto"}
        items.insert(1, Candidate(f"torch program ({dtype})", [], 0, runtimes=runtimes))
    if has_linear:
        per_token = {"quantize": {"mode": "dynamic", "activation_scales": "token"}}
        items.insert(
            items.index(next(c for c in items if c.name == "dynamic int8")) + 1,
            Candidate("dynamic int8, per-token", [per_token], 1),
        )
        items.append(
            Candidate(
                "int4 weight-only", [{"quantize": {"mode": "weight_only", "block_size": 32}}], 1
            )
        )
    items.append(
        Candidate(
            "static int8 + fallback", [{"quantize": {"mode": "static", "fallback": "auto"}}], 1
        )
    )
    if model_format == "torch" and has_train:
        for sparsity in sparsities:
            prune = {
                "prune": {
                    "granularity": "channel",
                    "importance": "taylor",
                    "schedule": {
                        "polynomial_decay": {
                            "final_sparsity": sparsity,
                            "end_step": 60,
                            "frequency": 20,
                        }
                    },
                    "finetune": {"epochs": 5, "distill": 0.5},
                }
            }
            items.append(Candidate(f"channel prune {sparsity:.0%}", [prune], 1))
            items.append(
                Candidate(f"channel prune {sparsity:.0%} + static int8", [prune, static], 2)
            )
    return items


def tune(spec: TuneSpec, out: Path, progress: Any = None) -> TuneResult:
    """Search, pick, write ``best-recipe.yaml`` and the winning artifact under ``out``."""
    from slimserve.core.verdict import baseline_score, verdict
    from slimserve.loading import load_model
    from slimserve.measure.bench import bench_interleaved
    from slimserve.measure.evaluate import evaluate
    from slimserve.measure.summary import model_size
    from slimserve.measure.timing import TIMED_SPINNING
    from slimserve.pipeline import recipe_data, run_recipe, with_example_inputs
    from slimserve.recipe import parse_recipe
    from slimserve.runtime import load_predictor, predict_all

    started = time.perf_counter()
    base_recipe = parse_recipe({"name": "tune", "model": spec.model, "data": spec.data})
    data = recipe_data(base_recipe)
    if "eval" not in data:
        raise SlimserveError("tune needs eval data (--data) to measure quality.")
    model = with_example_inputs(load_model(base_recipe.model), data)
    evaluation = data["eval"].renamed(model.input_names)
    base_predictor = load_predictor(model)
    metric = "accuracy" if evaluation.labels is not None else "cosine_mean"
    reference = predict_all(base_predictor, evaluation) if metric != "accuracy" else None
    original = None if reference is not None else evaluate(base_predictor, evaluation)[metric]
    baseline = baseline_score(metric, original) or 0.0
    quick = evaluation.take(QUICK_SAMPLES)
    quick_reference = None if reference is None else reference[:QUICK_SAMPLES]
    quick_original = None if reference is not None else evaluate(base_predictor, quick)[metric]
    has_linear = _has_linear(model)
    candidates = [
        c
        for c in candidate_list(model.format, has_linear, "train" in data, spec.sparsities)
        if ("torch" if c.runtimes else "onnx") in spec.runtimes
    ]
    if not candidates:
        raise SlimserveError(
            "No candidate to try: the model is ONNX and only the torch runtime is allowed. "
            "Allow onnx (--runtimes onnx,torch) or give the PyTorch model."
        )
    ctx = Context(data=data, reference=model, seed=0, goal_metric=metric, max_drop=spec.max_drop)
    for index, candidate in enumerate(candidates):
        elapsed = time.perf_counter() - started
        if elapsed > spec.budget_s:
            candidate.status = "skipped: time budget spent"
            continue
        if progress:
            progress(f"{candidate.name} ({index + 1}/{len(candidates)})", index / len(candidates))
        t0 = time.perf_counter()
        try:
            if candidate.runtimes is not None:
                built = _torch_program(model)
            else:
                built = _build(model, candidate.steps, ctx)
        except SlimserveError as exc:
            candidate.status = f"failed: {exc}"
            continue
        predictor = load_predictor(built)
        quick_score = evaluate(predictor, quick, quick_reference)[metric]
        # A first look on a few samples, with a wide margin: only the hopeless stop here.
        if not verdict(metric, quick_original, quick_score, 2 * spec.max_drop + 0.01).met:
            candidate.metric = quick_score
            candidate.status = f"rejected early: {metric} {quick_score:.4f} on {len(quick)} samples"
            candidate.seconds = time.perf_counter() - t0
            continue
        candidate.metric = evaluate(predictor, evaluation, reference)[metric]
        candidate.size_bytes = model_size(built)[0]
        candidate.seconds = time.perf_counter() - t0
        candidate.model = built
        judged = verdict(metric, original, candidate.metric, spec.max_drop)
        candidate.status = "accepted" if judged.met else f"rejected: {judged.shortfall()}"
    accepted = [c for c in candidates if c.status == "accepted"]
    if accepted:
        predictors = {c.name: load_predictor(c.model, spinning=TIMED_SPINNING) for c in accepted}
        timings = bench_interleaved(predictors, evaluation, (1, 32), warmup=10, repeats=50)
        for c in accepted:
            c.latency_ms = timings[c.name][1].p50_ms
            c.items_per_s = timings[c.name][32].items_per_s
            c.timings = timings[c.name]
    best = pick_best(accepted, spec.objective)
    explanation = [] if best else _explain(candidates, metric, baseline, spec)
    out.mkdir(parents=True, exist_ok=True)
    _pareto_plot(candidates, metric, spec.objective, out / "tune-pareto.png")
    if best is not None:
        recipe = {
            "name": "tuned",
            "model": spec.model,
            "data": spec.data,
            "steps": best.steps,
            "goal": {"metric": metric, "max_drop": spec.max_drop},
        }
        if best.runtimes is not None:
            recipe["runtimes"] = best.runtimes
        (out / "best-recipe.yaml").write_text(
            "# Written by slimserve tune: `slimserve optimize best-recipe.yaml` rebuilds it.\n"
            + yaml.safe_dump(recipe, sort_keys=False)
        )
        run = run_recipe(parse_recipe(recipe, base=Path.cwd()), out)
        return TuneResult(candidates, best, baseline, metric, explanation, run)
    return TuneResult(candidates, best, baseline, metric, explanation)


TIE = 0.05
"""Without paired timings, objective values within 5% of the best are a tie."""


def pick_best(accepted: list[Candidate], objective: Objective) -> Candidate | None:
    """The best on the objective; candidates with no measurable difference from it (paired
    per-round ratios of one interleaved run, ``timing``) tie, and the smaller, then the
    simpler (fewer techniques), then the higher quality wins among them."""
    if not accepted:
        return None
    best = min(accepted, key=lambda c: (c.objective(objective), -(c.metric or 0)))
    if objective == "size":
        tied = [c for c in accepted if c.size_bytes == best.size_bytes]
        return min(tied, key=lambda c: (c.latency_ms or 0, c.techniques, -(c.metric or 0)))
    batch = 1 if objective == "latency" else 32
    tied = [c for c in accepted if c is best or _no_difference(c, best, objective, batch)]
    return min(tied, key=lambda c: (c.size_bytes or 0, c.techniques, -(c.metric or 0)))


def _no_difference(a: Candidate, b: Candidate, objective: Objective, batch: int) -> bool:
    if a.timings and b.timings and batch in a.timings and batch in b.timings:
        ratio = a.timings[batch].speedup_over(b.timings[batch])
        return bool(ratio.contended or not ratio.measurable)
    return abs(a.objective(objective) - b.objective(objective)) <= abs(b.objective(objective)) * TIE


def _build(model: Any, steps: list[dict[str, Any]], ctx: Context) -> Any:
    from slimserve.recipe import plan_steps, validate_step
    from slimserve.steps import run_steps

    configs = [validate_step(key, body) for step in steps for key, body in step.items()]
    return run_steps(plan_steps(tuple(configs), model.format), model, ctx)


def _torch_program(model: Any) -> Any:
    """The source model as a torch.export program (bfloat16 where the CPU has it)."""
    from slimserve.techniques.torch_program import export_program, resolve_dtype

    if model.format != "torch":
        raise SlimserveError("a torch program needs a PyTorch source model")
    return export_program(model, resolve_dtype("auto")[0])[0]


def _has_linear(model: Any) -> bool:
    from torch import nn

    from slimserve.models import OnnxModel

    if isinstance(model, OnnxModel):
        return any(n.op_type in ("Gemm", "MatMul") for n in model.proto.graph.node)
    return any(isinstance(m, nn.Linear) for m in model.module.modules())


def _explain(
    candidates: list[Candidate], metric: str, baseline: float, spec: TuneSpec
) -> list[str]:
    """Why nothing met the tolerance, and what to try."""
    lines = [
        f"No candidate kept {metric} within {spec.max_drop:.4f} of the baseline ({baseline:.4f})."
    ]
    measured = [c for c in candidates if c.metric is not None]
    if measured:
        closest = max(measured, key=lambda c: c.metric or 0)
        lines.append(
            f"Closest: {closest.name} at {closest.metric:.4f} (drop "
            f"{baseline - (closest.metric or 0):.4f})."
        )
    quant = [c for c in measured if c.techniques == 1 and "prune" not in c.name]
    if quant and all(baseline - (c.metric or 0) > spec.max_drop for c in quant):
        lines.append(
            "Every quantization mode loses too much: some layers are too sensitive to int8 "
            "(the fallback candidate's report ranks them); keep them in float with "
            "quantize.exclude, or use QAT (the qat step)."
        )
    pruned = [c for c in measured if "prune" in c.name]
    if pruned and all(baseline - (c.metric or 0) > spec.max_drop for c in pruned):
        lines.append(
            "Channel pruning past the smallest tried sparsity loses too much: the model is "
            "near its sparsity limit with this much fine-tuning; try a lower sparsity or "
            "more epochs."
        )
    lines.append(f"Or allow a larger drop (--max-drop) than {spec.max_drop:.2%}.")
    return lines


def _pareto_plot(
    candidates: list[Candidate], metric: str, objective: Objective, path: Path
) -> None:
    from slimserve.measure.plots import (
        draw_front,
        figure_png,
        label_table,
        pareto_front,
        place_labels,
        pyplot,
        scatter_panel,
    )

    points = [c for c in candidates if c.metric is not None and c.size_bytes is not None]
    if not points:
        return
    plt = pyplot()
    fig = plt.figure(figsize=(11, 4.4), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=(1.3, 1))
    ax, table = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])

    def cost(c: Candidate) -> float:
        if objective == "size" or c.latency_ms is None:
            return (c.size_bytes or 0) / 1e3
        return c.latency_ms

    labels = [str(i + 1) for i in range(len(points))]
    colors = ["#55a868" if c.status == "accepted" else "#c44e52" for c in points]
    shown = scatter_panel(
        ax, labels, [cost(c) for c in points], [c.metric or 0 for c in points], colors
    )
    accepted = [(cost(c), y) for c, y in zip(points, shown, strict=True) if c.status == "accepted"]
    if accepted:
        draw_front(ax, pareto_front(accepted), "Pareto front of accepted")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("model size (KB)" if objective == "size" else "batch-1 p50 latency (ms)")
    ax.set_ylabel(metric)
    ax.set_title("tune: green accepted, red rejected")
    label_table(
        table,
        [(n, c.name, f"{c.metric:.4f}") for n, c in zip(labels, points, strict=True)],
    )
    place_labels(fig)
    path.write_bytes(figure_png(fig))
