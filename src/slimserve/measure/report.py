"""Reports: the stage comparison table and a Markdown report of an artifact's manifest."""

from __future__ import annotations

from typing import Any

from slimserve.artifact import Manifest

HONESTY_NOTES = {
    "unstructured": (
        "Unstructured zeros shrink the compressed file but not CPU time: ONNX Runtime's "
        "dense kernels multiply zeros like any other number."
    ),
    "n:m": (
        "N:M sparsity (e.g. 2:4) is a pattern sparse tensor cores can use; on this CPU "
        "runtime it saves compressed bytes, not time."
    ),
    "channel": (
        "Channel pruning removed whole channels/neurons: the layers are physically smaller, "
        "so the model is smaller and faster on any runtime."
    ),
    "quantize": (
        "int8 weights make the file about 4x smaller; speed depends on the CPU's int8 "
        "kernels (VNNI/AMX) and on batch size, so read the timings above, not the promise."
    ),
}


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def stage_table(
    stages: list[dict[str, Any]], compact: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows comparing every stage with the baseline (the first stage).

    ``compact`` (for terminals) keeps one quality metric, the smallest batch's p50
    latency and the larger batches' throughput.
    """
    if not stages:
        return [], []
    metric_names = [
        m
        for m in ("accuracy", "cosine_mean", "top1_agreement")
        if any(m in s["metrics"] for s in stages)
    ]
    if compact:
        metric_names = metric_names[:1]
    batch_sizes = sorted({int(b) for s in stages for b in s["timings"]})
    columns = [(b, kind) for b in batch_sizes for kind in ("p50", "items")]
    if compact and len(batch_sizes) > 1:
        columns = [(batch_sizes[0], "p50")] + [(b, "items") for b in batch_sizes[1:]]
    headers = ["stage"] + ([] if compact else ["format"]) + [*metric_names, "size", "gzip"]
    headers += [f"b{b} p50 ms" if k == "p50" else f"b{b} items/s" for b, k in columns]
    base = stages[0]
    rows = []
    for stage in stages:
        row = [stage["stage"]] + ([] if compact else [stage["format"]])
        row += [
            f"{stage['metrics'][m]:.4f}" if m in stage["metrics"] else "-" for m in metric_names
        ]
        row.append(_with_ratio(stage["size_bytes"], base["size_bytes"], human_bytes))
        row.append(_with_ratio(stage["compressed_bytes"], base["compressed_bytes"], human_bytes))
        for b, kind in columns:
            timing = stage["timings"].get(str(b))
            base_timing = base["timings"].get(str(b))
            if timing is None:
                row.append("-")
            elif kind == "p50":
                row.append(f"{timing['p50_ms']:.3f}")
            else:
                speedup = (
                    f" ({stage_ratio(timing, base_timing)})"
                    if base_timing and stage is not base
                    else ""
                )
                row.append(f"{timing['items_per_s']:,.0f}{speedup}")
        rows.append(row)
    return headers, rows


def stage_ratio(timing: dict[str, Any], base: dict[str, Any]) -> str:
    """A stage's throughput vs the baseline's, paired round by round (bench.Timing); a
    difference inside the rounds' spread is said to be none, a contended one flagged."""
    from slimserve.measure.bench import Timing

    ratio = Timing.from_dict(timing).speedup_over(Timing.from_dict(base))
    if ratio.contended:
        return "contended"
    if not ratio.measurable:
        return "no measurable difference"
    return f"{ratio.median:.2f}x"


def _with_ratio(value: int, base: int, fmt: Any) -> str:
    if not base or value == base:
        return str(fmt(value))
    return f"{fmt(value)} ({100 * value / base:.0f}%)"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _figure_png(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


QUALITY_KEYS = ("accuracy", "cosine_mean", "top1_agreement")


def tradeoff_plot(manifest: Manifest) -> dict[str, bytes]:
    """Quality against batch-1 latency and against size, one point per stage, with the
    Pareto front (no other stage is both better and faster/smaller) drawn through."""
    stages = manifest.stages
    metric = next(
        (
            k
            for k in QUALITY_KEYS
            if all(k in s["metrics"] for s in stages[1:]) and k in stages[0]["metrics"]
        ),
        None,
    )
    batch = min((int(b) for s in stages for b in s["timings"]), default=None)
    if metric is None or batch is None or len(stages) < 2:
        return {}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    points = [
        (
            s["stage"],
            s["metrics"][metric],
            s["timings"][str(batch)]["p50_ms"],
            s["size_bytes"] / 1e3,
        )
        for s in stages
    ]
    for ax, index, label in (
        (axes[0], 2, f"batch-{batch} p50 latency (ms)"),
        (axes[1], 3, "model size (KB)"),
    ):
        xs = [p[index] for p in points]
        ys = [p[1] for p in points]
        ax.scatter(xs, ys, color="#4c72b0", zorder=3)
        for p in points:
            ax.annotate(
                p[0], (p[index], p[1]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        draw_front(ax, pareto_front([(p[index], p[1]) for p in points]), "Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter, NullFormatter

        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("What each stage cost in quality and bought in speed and size")
    return {"plots/tradeoff.png": _figure_png(fig)}


def draw_front(ax: Any, front: list[tuple[float, float]], label: str) -> None:
    """The Pareto front as a step line (quality holds until the next cheaper point)."""
    ax.step(
        [f[0] for f in front],
        [f[1] for f in front],
        where="post",
        color="#dd8452",
        lw=1,
        label=label,
    )


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (cost, quality) not beaten by another with lower cost and higher quality;
    sorted by cost."""
    front: list[tuple[float, float]] = []
    for cost, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or quality > front[-1][1]:
            front.append((cost, quality))
    return front


def sensitivity_plots(manifest: Manifest) -> dict[str, bytes]:
    """For each quantize step that ranked nodes: the metric each node costs alone."""
    plots = {}
    for index, step in enumerate(manifest.steps):
        ranking = step.details.get("sensitivity") if step.details else None
        if not ranking:
            continue
        plt = _pyplot()
        rows = ranking[:20]
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.3))
        ax.barh([r["node"] for r in rows], [r["drop"] for r in rows], color="#c44e52")
        ax.invert_yaxis()
        ax.set_xlabel(f"{step.details.get('fallback_metric', 'metric')} lost when quantized alone")
        ax.set_title(f"Step {index + 1}: quantization sensitivity per node")
        plots[f"plots/step{index + 1}-sensitivity.png"] = _figure_png(fig)
    return plots


def pruning_plots(manifest: Manifest) -> dict[str, bytes]:
    """For each prune step: per-layer sparsity bars, and loss/metric against the schedule."""
    plt = _pyplot()
    plots: dict[str, bytes] = {}
    for index, step in enumerate(manifest.steps):
        details = step.details
        if "params_before" not in details:  # what a pruning step records
            continue
        layers = details.get("layer_sparsity") or {}
        if layers:
            fig, ax = plt.subplots(figsize=(6, 0.4 * len(layers) + 1.2))
            names = list(layers)
            ax.barh(names, [100 * layers[n] for n in names], color="#4c72b0")
            ax.invert_yaxis()
            ax.set_xlim(0, 100)
            ax.set_xlabel("zeros in the layer's weights (%)")
            ax.set_title(f"Step {index + 1}: sparsity per layer")
            plots[f"plots/step{index + 1}-layer-sparsity.png"] = _figure_png(fig)
        losses = details.get("losses") or []
        history = details.get("history") or []
        if losses and history:
            stride = details.get("loss_stride", 1)
            fig, ax = plt.subplots(figsize=(7, 3.6))
            ax.plot([i * stride for i in range(len(losses))], losses, color="#4c72b0", lw=1)
            ax.set_xlabel("training step")
            ax.set_ylabel("loss", color="#4c72b0")
            ax.set_yscale("log")
            right = ax.twinx()
            steps = [p["step"] for p in history]
            right.step(
                steps,
                [100 * p["sparsity"] for p in history],
                where="post",
                color="#dd8452",
                label="sparsity (%)",
            )
            right.plot(
                steps,
                [100 * p["metric_after_update"] for p in history],
                "o",
                color="#55a868",
                ms=3,
                label="metric after update (%)",
            )
            right.set_ylim(0, 105)
            right.legend(loc="lower right", fontsize=8)
            ax.set_title(f"Step {index + 1}: loss and metric against the schedule")
            plots[f"plots/step{index + 1}-schedule.png"] = _figure_png(fig)
    return plots


def render_markdown(manifest: Manifest, plots: dict[str, bytes] | None = None) -> str:
    """The report.md stored in every artifact (``plots``: the images it links to)."""
    plots = plots or {}
    notes = manifest.notes
    headers, rows = stage_table(manifest.stages)
    source = ", ".join(f"{k}: {v}" for k, v in manifest.source.spec.items())
    lines = [
        f"# {manifest.name}",
        "",
        f"Made by slimserve {manifest.slimserve_version} on {manifest.created} "
        f"from `{source}` (sha256 `{(manifest.source.sha256 or '')[:12]}`).",
        "",
        "## Stages",
        "",
        "Every stage measured in the same run on the same data; timings in interleaved "
        f"rounds (about {manifest.recipe.get('bench', {}).get('repeats', '?')} runs each, "
        f"{manifest.recipe.get('bench', {}).get('threads', '?')} threads), medians; a ratio "
        "against the baseline is the median of per-round ratios, 'no measurable difference' "
        "when the rounds disagree on its direction, 'contended' when other processes took "
        "the CPU.",
        "",
        markdown_table(headers, rows),
        "",
    ]
    if "plots/tradeoff.png" in plots:
        lines += ["![quality against latency and size](plots/tradeoff.png)", ""]
    lines += ["## Steps", ""]
    for step in manifest.steps:
        config = ", ".join(f"{k}={v}" for k, v in _compact(_relevant(step)).items())
        lines.append(f"- **{step.name}** ({step.duration_s:.1f} s): {config}")
    lines += ["", "## Verdict", ""]
    lines += [f"- {note}" for note in notes]
    lines += _pruning_sections(manifest, plots)
    lines += _sensitivity_sections(manifest, plots)
    keys = [s.config.get("granularity", s.name) for s in manifest.steps]
    honesty = [HONESTY_NOTES[k] for k in dict.fromkeys(keys) if k in HONESTY_NOTES]
    if honesty:
        lines += ["", "## What the numbers mean", ""] + [f"- {n}" for n in honesty]
    io = manifest.io
    lines += ["", "## Model I/O", ""]
    for kind in ("inputs", "outputs"):
        for t in io.get(kind, []):
            lines.append(f"- {kind[:-1]} `{t['name']}`: {t['dtype']} {t['shape']}")
    return "\n".join(lines) + "\n"


def _pruning_sections(manifest: Manifest, plots: dict[str, bytes]) -> list[str]:
    """Parameters before/after, overall and per-layer sparsity for each prune step."""
    lines: list[str] = []
    for index, step in enumerate(manifest.steps):
        details = step.details
        if "params_before" not in details:  # what a pruning step records
            continue
        before, after = details.get("params_before", 0), details.get("params_after", 0)
        change = f" ({100 * (after - before) / before:+.0f}%)" if before else ""
        lines += ["", f"## Pruning (step {index + 1}: {step.config.get('granularity')})", ""]
        lines.append(f"- parameters: {before:,} -> {after:,}{change}")
        if "sparsity" in details:
            lines.append(f"- zeros in the pruned layers: {details['sparsity']:.1%}")
        metric_before, metric_after = details.get("metric_before"), details.get("metric_after")
        if metric_before is not None and metric_after is not None:
            lines.append(f"- metric on eval data: {metric_before:.4f} -> {metric_after:.4f}")
        for kind in ("schedule", "layer-sparsity"):
            name = f"plots/step{index + 1}-{kind}.png"
            if name in plots:
                lines += ["", f"![{kind}]({name})"]
        layer_sparsity = details.get("layer_sparsity") or {}
        if layer_sparsity:
            lines += ["", "| layer | sparsity |", "|---|---|"]
            lines += [f"| {name} | {value:.1%} |" for name, value in layer_sparsity.items()]
    return lines


def _compact(value: Any) -> Any:
    """A config without its empty entries, for one readable line."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v not in (None, [], {}, ())}
    return value


def _sensitivity_sections(manifest: Manifest, plots: dict[str, bytes]) -> list[str]:
    lines: list[str] = []
    for index, step in enumerate(manifest.steps):
        details = step.details or {}
        if "sensitivity" not in details and "float_nodes" not in details:
            continue
        lines += ["", f"## Quantization fallback (step {index + 1})", ""]
        floats = details.get("float_nodes") or []
        lines.append(f"- nodes kept in float: {', '.join(floats) if floats else 'none needed'}")
        for attempt in details.get("attempts", []):
            lines.append(
                f"- {attempt['float_nodes']} float node(s): "
                f"{details.get('fallback_metric', 'metric')} {attempt['metric']:.4f}"
            )
        name = f"plots/step{index + 1}-sensitivity.png"
        if name in plots:
            lines += ["", f"![sensitivity]({name})"]
    return lines


HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f6f6f6; padding: 1px 4px; }
"""


def render_html(markdown_text: str, plots: dict[str, bytes], title: str) -> str:
    """report.html: the Markdown report rendered, with every plot embedded (one file)."""
    import base64
    import html

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    for name, data in plots.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        body = body.replace(f'src="{name}"', f'src="{uri}"')
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{HTML_STYLE}</style></head><body>\n{body}</body></html>\n"
    )


def build_report(manifest: Manifest) -> dict[str, bytes]:
    """Every report file of an artifact: report.md, report.html and the plots."""
    plots = {**tradeoff_plot(manifest), **pruning_plots(manifest), **sensitivity_plots(manifest)}
    markdown_text = render_markdown(manifest, plots)
    html_text = render_html(markdown_text, plots, f"slimserve report: {manifest.name}")
    return {"report.md": markdown_text.encode(), "report.html": html_text.encode(), **plots}


def _relevant(step: Any) -> dict[str, Any]:
    """A step's config as its technique knows it (an earlier version's manifest lists
    every quantization mode's options in each quantize step)."""
    from slimserve.recipe import STEPS, step_class

    cls = step_class(step.name, step.config) if step.name in STEPS else None
    if cls is None:
        return dict(step.config)
    return {k: v for k, v in step.config.items() if k in cls.model_fields}
