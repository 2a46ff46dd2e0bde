"""Commands that measure: inspect, eval, bench, report, check, preflight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from slimserve.cli.base import activity, app, console, err_console, print_table, user_errors
from slimserve.core.errors import SlimserveError


@app.command()
@user_errors
def inspect(
    model: str = typer.Argument(..., help="Model file, 'pkg.mod:fn' factory, or artifact."),
) -> None:
    """Show a model's inputs/outputs, a per-layer table and its size raw and compressed."""
    from slimserve.loading import load_model
    from slimserve.measure.report import human_bytes
    from slimserve.measure.summary import summarize

    path = Path(model)
    if path.is_dir():
        from slimserve.artifact import load_artifact

        artifact = load_artifact(path)
        console.print(
            f"Artifact [bold]{artifact.manifest.name}[/]: steps "
            f"{' -> '.join(s.name for s in artifact.manifest.steps) or '(none)'}; "
            "all file hashes verified.",
            highlight=False,
        )
        if small := artifact.manifest.small_batches:
            line = f"Small batches (at most {small['max_tokens']} rows x tokens) run on "
            console.print(line + f"{small['file']} in {small['runtime']} ({small['stage']}).")
        if prefill := artifact.manifest.llm_prefill:
            console.print(f"Prompts run in OpenVINO {prefill['precision']}, decoding in ORT.")
        loaded: Any = artifact.model
        if loaded.format == "llm":
            _inspect_llm(loaded)
            return
    else:
        loaded = load_model(model)
    summary = summarize(loaded)
    columns = ("kind", "name", "dtype", "shape")
    print_table(
        "Inputs and outputs",
        columns,
        [
            (kind, t["name"], t["dtype"], str(t["shape"]))
            for kind, items in (("input", summary.inputs), ("output", summary.outputs))
            for t in items
        ],
        left=columns,
    )
    print_table(
        "Layers with weights",
        ("name", "op", "params", "dtype", "sparsity"),
        [
            (layer.name, layer.op, f"{layer.params:,}", layer.dtype, f"{layer.sparsity:.1%}")
            for layer in summary.layers
        ],
        left={"name", "op", "dtype"},
    )
    console.print(
        f"{summary.format} model: {summary.params:,} parameters, sparsity "
        f"{summary.sparsity:.1%}, size {human_bytes(summary.size_bytes)} raw, "
        f"{human_bytes(summary.compressed_bytes)} gzip-compressed",
        highlight=False,
    )


def _inspect_llm(model: Any) -> None:
    """A decoder LM build: its shape and its weight layers by precision."""
    from slimserve.measure.report import human_bytes
    from slimserve.measure.summary import llm_precisions

    shape = model.config()["model"]
    decoder = shape["decoder"]
    console.print(
        f"Decoder LM for onnxruntime-genai ({shape['type']}): {decoder['num_hidden_layers']}"
        f" layers, hidden {decoder['hidden_size']}, vocabulary {shape['vocab_size']}, "
        f"context {shape['context_length']}; {human_bytes(model.size_bytes())} on disk.",
        highlight=False,
    )
    rows = llm_precisions(model)
    total = sum(r[2] for r in rows) or 1
    print_table(
        "Weight layers by precision",
        ("precision", "layers", "parameters", "share"),
        [(kind, str(n), f"{params:,}", f"{params / total:.1%}") for kind, n, params in rows],
        left={"precision"},
    )


def _is_llm_artifact(source: str) -> bool:
    import json

    from slimserve.artifact import GENAI_RUNTIME, MANIFEST_FILE, is_artifact

    if not is_artifact(source):
        return False
    try:
        manifest = json.loads((Path(source) / MANIFEST_FILE).read_text())
    except (ValueError, OSError):
        return False  # load_artifact says what is wrong with it
    return isinstance(manifest, dict) and manifest.get("runtime") == GENAI_RUNTIME


def _load_any(source: str) -> Any:
    """A model to run: an artifact gives the model it is served with (ONNX or torch)."""
    from slimserve.artifact import is_artifact, load_artifact
    from slimserve.loading import load_model
    from slimserve.runtime import served_model

    if is_artifact(source):
        return served_model(load_artifact(source))
    return load_model(source)


@app.command("eval")
@user_errors
def eval_command(
    model: str = typer.Argument(..., help="Model file, 'pkg.mod:fn' factory, or artifact."),
    data: str = typer.Option(
        ..., "--data", "-d", help="example:digits[:test] | npz:FILE | python:pkg.mod:fn[:split]"
    ),
    reference: str | None = typer.Option(
        None, "--reference", "-r", help="Compare outputs with this model (fidelity)."
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="Custom metric 'pkg.module:function(outputs, labels)'."
    ),
    top_k: int = typer.Option(5, "--top-k", min=2, help="k of top-k accuracy/agreement."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Measure quality: accuracy and top-k with labels, fidelity against a reference; a
    decoder LM artifact's perplexity, KL divergence and top-1 agreement against the float
    model it was made from (or --reference) on prose (--data text:FILE or
    example:english:other)."""
    import json

    from slimserve.data import load_data, parse_data_spec
    from slimserve.measure.evaluate import evaluate
    from slimserve.runtime import load_predictor, predict_all

    if _is_llm_artifact(model):
        from slimserve.measure.llm import evaluate_llm_artifact

        metrics = evaluate_llm_artifact(Path(model), parse_data_spec(data), reference, threads)
        if as_json:
            console.print_json(json.dumps({"model": model, **metrics}))
            return
        print_table(
            f"{model} on {data} (against the float model, the same tokens)",
            ("metric", "value"),
            [(key, f"{value:.6g}") for key, value in metrics.items()],
        )
        return
    dataset = load_data(parse_data_spec(data))
    predictor = load_predictor(_load_any(model), threads)
    dataset = dataset.renamed(predictor.input_names)
    expected = None
    if reference is not None:
        expected = predict_all(load_predictor(_load_any(reference), threads), dataset)
    if dataset.labels is None and expected is None and metric is None:
        raise SlimserveError(
            "Nothing to measure: the data has no labels and no --reference or --metric was "
            "given. Add labels to the data, or compare with --reference ORIGINAL."
        )
    metrics = evaluate(predictor, dataset, expected, top_k, metric)
    if as_json:
        console.print_json(json.dumps({"model": model, "samples": len(dataset), **metrics}))
        return
    print_table(
        f"{model} on {data} ({len(dataset)} samples)",
        ("metric", "value"),
        [(key, f"{value:.6g}") for key, value in metrics.items()],
    )


BENCH_COLUMNS = (
    "model",
    "size",
    "gzip",
    "RSS",
    "batch",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "items/s",
    "vs first",
)


@app.command()
@user_errors
def bench(
    models: list[str] = typer.Argument(..., help="Models to time; ratios are vs the first."),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Inputs to time on (default: random, shaped like the model)."
    ),
    batch_sizes: str = typer.Option("1,32", "--batch-sizes", "-b", help="Comma-separated."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed runs first."),
    repeats: int = typer.Option(100, "--repeats", min=3, help="Timed runs per model and batch."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Latency (p50/p95/p99), throughput, memory and size; models timed interleaved."""
    import json

    from slimserve.data import load_data, parse_data_spec
    from slimserve.measure.bench import bench_json, bench_models, ratio_cell
    from slimserve.measure.report import human_bytes

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        raise SlimserveError(
            f"--batch-sizes takes comma-separated integers like 1,32, got '{batch_sizes}'."
        ) from None
    loaded = {name: _load_any(name) for name in models}
    dataset = load_data(parse_data_spec(data)) if data else None
    entries = bench_models(loaded, dataset, sizes, threads, warmup, repeats)
    report = bench_json(entries, threads, repeats)
    if as_json:
        console.print_json(json.dumps(report))
        return
    rows = []
    for row in report["models"]:  # type: ignore[attr-defined]
        for index, (batch, t) in enumerate(row["timings"].items()):
            head = (
                [
                    row["name"],
                    human_bytes(row["size_bytes"]),
                    human_bytes(row["compressed_bytes"]),
                    human_bytes(row["rss_bytes"]),
                ]
                if index == 0
                else ["", "", "", ""]
            )
            rows.append(
                [
                    *head,
                    batch,
                    f"{t['p50_ms']:.3f}",
                    f"{t['p95_ms']:.3f}",
                    f"{t['p99_ms']:.3f}",
                    f"{t['items_per_s']:,.0f}",
                    "baseline" if row is report["models"][0] else ratio_cell(t),  # type: ignore[index]
                ]
            )
    print_table(
        f"{threads} threads, medians of {repeats} interleaved runs; ratios vs {models[0]}",
        BENCH_COLUMNS,
        rows,
    )


@app.command()
@user_errors
def report(
    path: Path = typer.Argument(..., help="An artifact folder, or a run folder of artifacts."),
) -> None:
    """Write report.md and a self-contained report.html (plots embedded) again."""
    from slimserve.artifact import (
        MANIFEST_FILE,
        MODEL_FILE,
        is_artifact,
        load_artifact,
        save_artifact,
    )
    from slimserve.measure.report import build_report

    folders = (
        [path] if is_artifact(path) else sorted(p.parent for p in path.glob(f"*/{MANIFEST_FILE}"))
    )
    if not folders:
        raise SlimserveError(
            f"'{path}' holds no artifact (no {MANIFEST_FILE} in it or its sub-folders)."
        )
    for folder in folders:
        artifact = load_artifact(folder)
        # Every file the artifact has (tokenizer, torch program, ...) is saved again with
        # the new report: save_artifact writes exactly the files it is given.
        kept = {
            name: (folder / name).read_bytes()
            for name in artifact.manifest.files
            if name != MODEL_FILE
        }
        report_files = build_report(artifact.manifest)
        save_artifact(folder, artifact.model, artifact.manifest, {**kept, **report_files})
        console.print(f"Report: {folder / 'report.html'}", highlight=False)


UNDECIDED_EXIT = 3  # check: the measurement was too noisy to pass or fail a bound


@app.command()
@user_errors
def check(
    artifact: Path = typer.Argument(..., help="The artifact to gate."),
    max_drop: float | None = typer.Option(
        None, "--max-drop", help="Largest quality drop vs the baseline (default: the recipe's)."
    ),
    min_speedup: float | None = typer.Option(None, "--min-speedup", help="e.g. 1.5"),
    max_size_ratio: float | None = typer.Option(None, "--max-size-ratio", help="e.g. 0.3"),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Batch for the speed check (default: the recipe's largest)."
    ),
    repeats: int = typer.Option(100, "--repeats", min=3, help="Timed runs per model."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (each bound, measured value, noise)."
    ),
    junit: Path | None = typer.Option(
        None, "--junit", help="Also write a JUnit XML report (one test case per bound)."
    ),
) -> None:
    """CI gate: re-measure against the manifest's baseline; exit 1 when a bound fails, 3
    when the timing is too noisy to decide a speed-up bound."""
    import json
    import time

    from slimserve.check import Bounds, check_artifact, check_json, junit_xml
    from slimserve.core.files import write_atomic

    bounds = Bounds(max_drop, min_speedup, max_size_ratio, batch_size, repeats)
    started = time.perf_counter()
    result = check_artifact(artifact, bounds)
    if junit is not None:
        report = junit_xml(result, artifact, time.perf_counter() - started)
        write_atomic(junit, report.encode())
    code = 1 if result.failures else UNDECIDED_EXIT if result.undecided else 0
    if as_json:
        typer.echo(json.dumps(check_json(result, artifact), indent=2))
        raise typer.Exit(code)
    low, high = result.speedup_range
    speedup = f"{result.speedup:.2f}x ({low:.2f}-{high:.2f}x)"
    print_table(
        f"check {artifact}",
        ("measure", "baseline", "artifact"),
        [
            (result.metric, f"{result.baseline:.4f}", f"{result.candidate:.4f}"),
            (
                f"batch-{result.batch_size} speed-up",
                "1.00x",
                speedup + (" contended" if result.contended else ""),
            ),
            ("size ratio", "1.00", f"{result.size_ratio:.2f}"),
        ],
    )
    if result.failures:
        err_console.print(escape(f"check failed: {'; '.join(result.failures)}"), highlight=False)
        raise typer.Exit(1)
    if result.undecided:
        err_console.print(
            escape(f"check undecided: {'; '.join(result.undecided)}"), highlight=False
        )
        raise typer.Exit(UNDECIDED_EXIT)
    console.print("check passed")


@app.command()
@user_errors
def preflight(
    model: str = typer.Argument(..., help="Model file, 'pkg.mod:fn' factory, or example:NAME."),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Inputs (default: random, shaped like the model)."
    ),
    repeats: int = typer.Option(30, "--repeats", min=3, help="Timed runs per candidate."),
) -> None:
    """Before a long run: which techniques pay off on this machine, measured now."""
    from slimserve.data import load_data, parse_data_spec
    from slimserve.preflight import ISA_FLAGS, summary_rows
    from slimserve.preflight import preflight as run_preflight

    dataset = load_data(parse_data_spec(data)) if data else None
    with activity("preflight") as update:
        update("measuring candidates on this machine", None)
        result = run_preflight(_load_any(model), dataset, repeats)
    print_table(
        "This machine",
        ("feature", "value"),
        [(label, "yes" if result.features[flag] else "no") for flag, label in ISA_FLAGS.items()]
        + list(result.runtimes.items()),
        left={"feature", "value"},
        show_header=False,
    )
    print_table(
        "Predicted effect (ratios vs ORT fp32, measured on a few batches)",
        ("technique", "size", "cosine", "b1 speed-up", "b32 speed-up"),
        summary_rows(result),
    )
    for warning in result.warnings:
        console.print(f"[yellow]![/] {escape(warning)}", highlight=False)
