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
    fig = tradeoff_figure(manifest)
    return {} if fig is None else {"plots/tradeoff.png": figure_png(fig)}


def tradeoff_figure(manifest: Manifest) -> Any:
    """The trade-off figure (None when there is nothing to plot): points numbered, the
    numbers explained in a table beside the panels, so long stage names never overlap."""
    stages = manifest.stages
    # the baseline is the reference of fidelity metrics: 1.0 by definition, not recorded
    reference = {"cosine_mean": 1.0, "top1_agreement": 1.0}
    metric = next(
        (
            k
            for k in QUALITY_KEYS
            if all(k in s["metrics"] for s in stages[1:])
            and (k in stages[0]["metrics"] or k in reference)
        ),
        None,
    )
    batch = min((int(b) for s in stages for b in s["timings"]), default=None)
    decode = all("decode_tokens_per_s" in s["metrics"] for s in stages)
    if metric is None or (batch is None and not decode) or len(stages) < 2:
        return None
    if batch is not None:
        latency = [s["timings"][str(batch)]["p50_ms"] for s in stages]
        latency_label = f"batch-{batch} p50 (ms)"
    else:  # a decoder LM: the time a decoded token takes at batch 1
        latency = [1000 / max(s["metrics"]["decode_tokens_per_s"], 1e-9) for s in stages]
        latency_label = "ms per decoded token (batch 1)"
    plt = pyplot()
    fig = plt.figure(figsize=(12, 4.4), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 0.8))
    left = fig.add_subplot(grid[0])
    right = fig.add_subplot(grid[1], sharey=left)
    table = fig.add_subplot(grid[2])
    labels = [str(i + 1) for i in range(len(stages))]
    ys = [s["metrics"].get(metric, reference.get(metric, 0.0)) for s in stages]
    for ax, xs, label in (
        (left, latency, latency_label),
        (right, [s["size_bytes"] / 1e3 for s in stages], "model size (KB)"),
    ):
        shown = scatter_panel(ax, labels, xs, ys, ["#4c72b0"] * len(xs))
        draw_front(ax, pareto_front(list(zip(xs, shown, strict=True))), "Pareto front")
        ax.set_xlabel(label)
        ax.legend(fontsize=8, loc="lower right")
    left.set_ylabel(metric)
    right.tick_params(labelleft=False)
    label_table(
        table, [(n, s["stage"], f"{y:.4f}") for n, s, y in zip(labels, stages, ys, strict=True)]
    )
    fig.suptitle("What each stage cost in quality and bought in speed and size")
    place_labels(fig)
    return fig


def scatter_panel(
    ax: Any, labels: list[str], xs: list[float], ys: list[float], colors: list[str]
) -> list[float]:
    """Numbered points on a log x axis with 1-2-5 ticks; points close together share
    one label ("2,3"); a few y values far below the rest are drawn at the bottom edge
    (a down triangle with the value) instead of stretching the axis. Returns the y each
    point is drawn at. Call ``place_labels`` once the figure is laid out."""
    import math

    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    bottom = _robust_floor(ys)
    shown = [max(y, bottom) for y in ys]
    for x, y, color in zip(xs, ys, colors, strict=True):
        below = y < bottom
        ax.scatter([x], [max(y, bottom)], marker="v" if below else "o", color=color, zorder=3)
        if below:
            ax.annotate(
                f"{y:.3f}", (x, bottom), fontsize=7, xytext=(5, -9), textcoords="offset points"
            )
    low, high = min(xs), max(xs)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(nice_log_ticks(low, high)))
    ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(low / 1.35, high * 1.6)
    top = max(shown)
    span = max(top - bottom, 1e-4)
    ax.set_ylim(bottom - 0.1 * span, top + 0.15 * span)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(alpha=0.3)
    # one label per group of points within ~4 % of the axes of each other
    lx, hx = math.log10(low / 1.35), math.log10(high * 1.6)
    frac = [
        ((math.log10(x) - lx) / (hx - lx), (y - bottom) / (1.25 * span))
        for x, y in zip(xs, shown, strict=True)
    ]
    groups: list[list[int]] = []
    for i, (fx, fy) in enumerate(frac):
        home = next(
            (
                g
                for g in groups
                if abs(frac[g[0]][0] - fx) < 0.04 and abs(frac[g[0]][1] - fy) < 0.05
            ),
            None,
        )
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    for group in groups:
        ax.annotate(
            ",".join(labels[i] for i in group),
            (xs[group[0]], shown[group[0]]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
            gid="point-label",
        )
    return shown


OFFSETS = ((4, 4), (4, -12), (-4, 4), (-4, -12), (4, 14), (4, -22), (-4, 14), (-4, -22))


def place_labels(fig: Any) -> None:
    """Move each point label to the first offset where it overlaps no label already
    placed (a greedy pass in display space, after layout)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        placed: list[Any] = []
        for label in [t for t in ax.texts if t.get_gid() == "point-label"]:
            for dx, dy in OFFSETS:
                label.set_position((dx, dy))
                label.set_horizontalalignment("left" if dx > 0 else "right")
                box = label.get_window_extent(renderer)
                if not any(box.overlaps(other) for other in placed):
                    break
            placed.append(label.get_window_extent(renderer))


def _robust_floor(values: list[float]) -> float:
    """The lowest y the axis shows: every point, unless a few (at most a quarter) lie
    below a gap that is most of the whole range; those are drawn at the edge."""
    ordered = sorted(values)
    span = ordered[-1] - ordered[0]
    if len(ordered) < 4 or span <= 0:
        return ordered[0]
    gaps = [(ordered[i + 1] - ordered[i], i) for i in range(len(ordered) - 1)]
    gap, index = max(gaps)
    if gap > 0.6 * span and index + 1 <= len(ordered) // 4:
        return ordered[index + 1]
    return ordered[0]


def nice_log_ticks(low: float, high: float) -> list[float]:
    """At least three 1-2-5 ticks covering [low, high] (more mantissas when the range is
    narrow), so a log axis is read without guessing."""
    import math

    for mantissas in ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), tuple(range(1, 10))):
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
            for m in mantissas
        ]
        inside = [t for t in ticks if low / 1.35 <= t <= high * 1.6]
        if len(inside) >= 3:
            return inside
    return inside


def label_table(ax: Any, rows: list[tuple[str, str, str]]) -> None:
    """The point numbers explained: number, stage, quality; long names wrapped."""
    import textwrap

    ax.axis("off")
    lines = []
    for number, name, value in rows:
        wrapped = textwrap.wrap(name, 34) or [""]
        lines.append(f"{number:>2}  {wrapped[0]:<34} {value}")
        lines += [f"    {more}" for more in wrapped[1:]]
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7)


def draw_front(ax: Any, front: list[tuple[float, float]], label: str) -> None:
    """The Pareto front as a step line (quality holds until the next cheaper point),
    its points ringed, so even a one-point front shows in the plot and the legend."""
    ax.plot(
        [f[0] for f in front],
        [f[1] for f in front],
        drawstyle="steps-post",
        color="#dd8452",
        lw=1.2,
        marker="o",
        markersize=9,
        markerfacecolor="none",
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


def qat_plots(manifest: Manifest) -> dict[str, bytes]:
    """For each qat step: the training loss (with where the ranges froze) and the input
    range each layer learned, which the int8 model uses instead of calibrated ones."""
    plots: dict[str, bytes] = {}
    for index, step in enumerate(manifest.steps):
        details = step.details or {}
        ranges, losses = details.get("learned_ranges"), details.get("losses")
        if step.name != "qat" or not ranges or not losses:
            continue
        plt = pyplot()
        fig, (curve, bars) = plt.subplots(
            1, 2, figsize=(11, max(3.6, 0.35 * len(ranges) + 1.4)), layout="constrained"
        )
        stride = details.get("loss_stride", 1)
        steps = [i * stride for i in range(len(losses))]
        curve.plot(steps, losses, color="#4c72b0", lw=1)
        curve.set_yscale("log")
        curve.set_xlabel("training step")
        curve.set_ylabel("loss (fake-quantized model)")
        frozen = step.config.get("freeze_ranges_after")
        if frozen is not None and steps:
            curve.axvline(
                frozen * (steps[-1] + stride), color="#dd8452", ls="--", label="ranges frozen"
            )
            curve.legend(fontsize=8)
        curve.grid(alpha=0.3)
        names = list(ranges)
        lows, highs = [ranges[n][0] for n in names], [ranges[n][1] for n in names]
        bars.barh(
            names, [h - lo for lo, h in zip(lows, highs, strict=True)], left=lows, color="#55a868"
        )
        bars.axvline(0, color="black", lw=0.6)
        bars.invert_yaxis()
        bars.set_xlabel("learned input range (min to max)")
        bars.grid(alpha=0.3, axis="x")
        fig.suptitle(f"Step {index + 1}: quantization-aware training")
        plots[f"plots/step{index + 1}-qat.png"] = figure_png(fig)
    return plots
