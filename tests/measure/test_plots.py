"""The report's plots are readable: labels do not overlap or leave the figure, log axes
have several labelled ticks, the Pareto front shows in plot and legend, and one far
outlier does not squash the rest."""

from __future__ import annotations

import copy
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

import slimserve as ss
from slimserve.measure.plots import tradeoff_figure


@pytest.fixture(scope="module")
def manifest(artifact: Path) -> ss.Manifest:
    return ss.load_artifact(artifact).manifest


def crowded(manifest: ss.Manifest, count: int, outlier: bool = False) -> ss.Manifest:
    """The run's stages plus ``count`` near-copies of the last (long names, nearly the
    same latency, size and accuracy): the crowding a run with alternatives produces."""
    stages = list(manifest.stages)
    for i in range(count):
        row = copy.deepcopy(stages[-1])
        row["stage"] = f"alt {i + 2}: quantize dynamic int8 per-token, openvino bf16"
        row["metrics"]["accuracy"] -= 0.0005 * (i // 2)
        row["timings"]["1"]["p50_ms"] *= 1.12 ** (i // 2)  # pairs, each pair a step apart
        row["size_bytes"] = int(row["size_bytes"] * (1 + 0.01 * i))
        stages.append(row)
    if outlier:
        stages[-1]["metrics"]["accuracy"] = 0.1
    return manifest.model_copy(update={"stages": stages})


def label_boxes(fig: Any) -> list[tuple[Any, Any]]:
    renderer = fig.canvas.get_renderer()
    return [
        (ax, text.get_window_extent(renderer))
        for ax in fig.axes
        for text in ax.texts
        if text.get_gid() == "point-label"
    ]


def test_point_labels_neither_overlap_nor_leave_the_figure(manifest: ss.Manifest) -> None:
    fig = tradeoff_figure(crowded(manifest, 8))
    boxes = label_boxes(fig)
    assert len(boxes) >= 2
    for (ax_a, a), (ax_b, b) in combinations(boxes, 2):
        assert ax_a is not ax_b or not a.overlaps(b)
    whole = fig.bbox
    assert all(
        whole.x0 <= b.x0 and b.x1 <= whole.x1 and whole.y0 <= b.y0 <= whole.y1 for _, b in boxes
    )
    # every stage is in the table beside the panels, by its number
    table = next(t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() != "point-label")
    assert all(f"{n:>2}  " in table for n in range(1, len(manifest.stages) + 9))


def test_log_axes_have_labelled_ticks_and_the_front_is_in_the_legend(
    manifest: ss.Manifest,
) -> None:
    fig = tradeoff_figure(manifest)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(panels) == 2
    for ax in panels:
        low, high = ax.get_xlim()
        labelled = [
            t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high
        ]
        assert len(labelled) >= 3
        (handle,) = ax.get_legend().legend_handles
        assert handle.get_marker() not in (None, "", "None") and handle.get_linewidth() > 0
    # the second panel shares the first's y axis: one y label, not one on top of the other
    assert panels[1].get_ylabel() == "" and panels[0].get_ylabel() == "accuracy"


def test_a_far_outlier_does_not_squash_the_other_points(manifest: ss.Manifest) -> None:
    fig = tradeoff_figure(crowded(manifest, 6, outlier=True))
    ax = next(ax for ax in fig.axes if ax.get_xscale() == "log")
    bottom, top = ax.get_ylim()
    assert bottom > 0.5 and top - bottom < 0.3  # the others keep the height; 0.1 sits at the edge
    assert any(t.get_text() == "0.100" for t in ax.texts)


def test_labels_on_one_spot_are_moved_apart() -> None:
    from slimserve.measure.plots import place_labels, pyplot

    fig, ax = pyplot().subplots()
    for text in ("1,2,3", "4,5,6", "7,8"):  # three groups drawn at one point
        ax.annotate(text, (0.5, 0.5), xytext=(4, 4), textcoords="offset points", gid="point-label")
    fig.canvas.draw()
    before = [b for _, b in label_boxes(fig)]
    assert before[0].overlaps(before[1])  # as drawn, they sit on each other
    place_labels(fig)
    after = [b for _, b in label_boxes(fig)]
    assert not any(a.overlaps(b) for a, b in combinations(after, 2))
