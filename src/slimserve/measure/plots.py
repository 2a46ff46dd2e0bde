"""The report's plots (matplotlib, Agg backend, PNG bytes): the quality/size/speed
trade-off across stages, per-layer sensitivity, per-layer sparsity and the pruning
schedule; plus the Pareto-front helpers tune draws its plot with."""

from __future__ import annotations

from typing import Any

from slimserve.artifact import Manifest


def figure_png(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def pyplot() -> Any:
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
    plt = pyplot()
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
    return {"plots/tradeoff.png": figure_png(fig)}


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
        plt = pyplot()
        rows = ranking[:20]
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.3))
        ax.barh([r["node"] for r in rows], [r["drop"] for r in rows], color="#c44e52")
        ax.invert_yaxis()
        ax.set_xlabel(f"{step.details.get('fallback_metric', 'metric')} lost when quantized alone")
        ax.set_title(f"Step {index + 1}: quantization sensitivity per node")
        plots[f"plots/step{index + 1}-sensitivity.png"] = figure_png(fig)
    return plots


def pruning_plots(manifest: Manifest) -> dict[str, bytes]:
    """For each prune step: per-layer sparsity bars, and loss/metric against the schedule."""
    plt = pyplot()
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
            plots[f"plots/step{index + 1}-layer-sparsity.png"] = figure_png(fig)
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
            plots[f"plots/step{index + 1}-schedule.png"] = figure_png(fig)
    return plots
