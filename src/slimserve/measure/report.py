"""Reports: the stage comparison table and a Markdown report of an artifact's manifest."""

from __future__ import annotations

from typing import Any

from slimserve.artifact import Manifest
from slimserve.measure.plots import pruning_plots, qat_plots, sensitivity_plots, tradeoff_plot

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
    "depth": (
        "Depth pruning removed whole decoder blocks: every decoded token reads fewer weights "
        "and runs fewer layers, so decode is faster in every runtime (measured above)."
    ),
    "width": (
        "Width pruning removed MLP channels and query heads: the matrices are physically "
        "smaller; the KV cache keeps its size (K/V heads are kept)."
    ),
    "distill": (
        "Distillation trained the pruned model on the original's next-token distributions, "
        "on training text from another source than the eval text: it recovers quality, not "
        "speed."
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
    metric_names = [m for m in STAGE_METRICS if any(m in s["metrics"] for s in stages)]
    if "decode_tokens_per_s" in metric_names:  # a decoder LM: every one, its own order
        metric_names = [m for m in LLM_METRICS if m in metric_names]
    elif compact:
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
            _metric(m, stage["metrics"][m]) if m in stage["metrics"] else "-" for m in metric_names
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


STAGE_METRICS = (
    "accuracy",
    "cosine_mean",
    "top1_agreement",
    "perplexity",
    "kl_divergence",
    "greedy_agreement",
    "decode_tokens_per_s",
)
"""The metrics a stage table shows, in this order (the decoder-LM ones last)."""
LLM_METRICS = (
    "perplexity",
    "kl_divergence",
    "top1_agreement",
    "greedy_agreement",
    "decode_tokens_per_s",
)


def _metric(name: str, value: float) -> str:
    if name == "decode_tokens_per_s":
        return f"{value:,.1f}"
    if name == "perplexity":
        return f"{value:.3f}"
    return f"{value:.4f}"


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
    plots = {
        **tradeoff_plot(manifest),
        **pruning_plots(manifest),
        **sensitivity_plots(manifest),
        **qat_plots(manifest),
    }
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
