"""Reports: the stage comparison table and a Markdown report of an artifact's manifest."""

from __future__ import annotations

from typing import Any

from slimserve.artifact import Manifest

HONESTY_NOTES = {
    "unstructured": (
        "Unstructured zeros shrink the compressed file but not CPU time: ONNX Runtime's "
        "dense kernels multiply zeros like any other number."
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
                    f" ({timing['items_per_s'] / base_timing['items_per_s']:.2f}x)"
                    if base_timing and stage is not base
                    else ""
                )
                row.append(f"{timing['items_per_s']:,.0f}{speedup}")
        rows.append(row)
    return headers, rows


def _with_ratio(value: int, base: int, fmt: Any) -> str:
    if not base or value == base:
        return str(fmt(value))
    return f"{fmt(value)} ({100 * value / base:.0f}%)"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(manifest: Manifest, notes: list[str]) -> str:
    """The report.md stored in every artifact."""
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
        "Every stage measured in the same run on the same data; timings interleaved, "
        f"medians of {manifest.recipe.get('bench', {}).get('repeats', '?')} runs with "
        f"{manifest.recipe.get('bench', {}).get('threads', '?')} threads; ratios against "
        "the baseline.",
        "",
        markdown_table(headers, rows),
        "",
        "## Steps",
        "",
    ]
    for step in manifest.steps:
        config = ", ".join(f"{k}={v}" for k, v in step.config.items() if v not in (None, [], {}))
        lines.append(f"- **{step.name}** ({step.duration_s:.1f} s): {config}")
    lines += ["", "## Verdict", ""]
    lines += [f"- {note}" for note in notes]
    honesty = [HONESTY_NOTES[s.name] for s in manifest.steps if s.name in HONESTY_NOTES]
    if honesty:
        lines += ["", "## What the numbers mean", ""] + [f"- {n}" for n in honesty]
    io = manifest.io
    lines += ["", "## Model I/O", ""]
    for kind in ("inputs", "outputs"):
        for t in io.get(kind, []):
            lines.append(f"- {kind[:-1]} `{t['name']}`: {t['dtype']} {t['shape']}")
    return "\n".join(lines) + "\n"
