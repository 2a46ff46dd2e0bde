"""A second executable for small batches: when another build that meets the goal answers
small batches faster than the one chosen for throughput (``serving_runtime``), both go
into the artifact and a batch is routed by its rows x tokens (``runtime/routed.py``).
Which build and up to where is measured here, in the run: batches of 1 to 32 rows of the
eval data's shortest, middling and longest inputs, every build timed interleaved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.serving_runtime import RUNTIME_LABELS, Candidate, goal_verdict

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.recipe import Recipe
    from slimserve.stages import Stage

PROBE_ROWS = (1, 2, 4, 8, 16, 32)
# Probes of more work are left out: a build for small batches that still wins there
# is routed up to this much (the crossovers measured were far below), and timing
# large batches in every build would cost minutes.
PROBE_MAX_WORK = 1024
# A probe counts as won below this share of the served build's time: a second file and a
# second compiled model in memory must buy more than the timing noise.
WIN_MARGIN = 0.9


@dataclass(frozen=True)
class SmallBatches:
    """The build that takes batches of at most ``max_tokens`` rows x tokens."""

    candidate: Candidate
    max_tokens: int
    points: list[tuple[int, float, float]]  # (rows x tokens, small ms, large ms)

    def record(self, file: str, openvino_precision: str) -> dict[str, Any]:
        runtime: str = self.candidate.runtime
        if runtime == "openvino" and openvino_precision == "f32":
            runtime = "openvino-f32"
        return {
            "file": file,
            "runtime": runtime,
            "stage": self.candidate.stage.name,
            "max_tokens": self.max_tokens,
            "points": [list(p) for p in self.points],
        }


def choose_small_batches(
    recipe: Recipe, baseline: Stage, chosen: Candidate, candidates: list[Candidate], data: Any
) -> tuple[SmallBatches | None, str]:
    """Among the other builds within the goal, the one that beats ``chosen`` on the most
    work (every probe batch up to its limit faster by ``WIN_MARGIN``), all timed on probe
    batches of ``data``; and a note saying what was decided and why (empty when there was
    nothing to decide)."""
    if chosen.runtime not in ("onnx", "openvino") or data is None:
        return None, ""

    def names(c: Candidate) -> tuple[Any, Any]:
        model = c.stage.model
        return getattr(model, "input_names", None), getattr(model, "output_names", None)

    others = [
        c
        for c in candidates
        if c is not chosen
        and c.runtime in ("onnx", "openvino")
        and names(c) == names(chosen)
        and goal_verdict(recipe, baseline, c.stage).met
    ]
    if not others:
        return None, ""
    tokens, ms = probe_times([chosen, *others], data, recipe.bench.threads)
    if not tokens:  # every probe over PROBE_MAX_WORK
        return None, ""

    def limit(index: int) -> int:  # the most work up to which this build wins every probe
        won = 0
        for work, mine, served in zip(tokens, ms[index], ms[0], strict=True):
            if mine >= WIN_MARGIN * served:
                break
            won = work
        return won

    limits = {i: limit(i) for i in range(1, len(others) + 1)}
    best = max(limits, key=lambda i: (limits[i], -ms[i][0]))
    unit = "rows x tokens" if "attention_mask" in data.inputs else "rows"
    smallest = f"{ms[0][0]:.2f} ms on the smallest probe, {tokens[0]} {unit}"
    if limits[best] == 0:
        return None, (
            f"One executable: no other build within the goal beat it on the smallest of "
            f"{len(tokens)} probe batches of the eval data ({smallest})."
        )
    fastest = others[best - 1]
    label = f"{fastest.stage.name} in {RUNTIME_LABELS[fastest.runtime]}"
    points = [(t, ms[best][j], ms[0][j]) for j, t in enumerate(tokens)]
    note = (
        f"Two executables: batches of at most {limits[best]} {unit} run on {label} "
        f"({ms[best][0]:.2f} ms against the served build's {smallest}), larger ones on "
        f"the served build; measured on {len(tokens)} probe batches of the eval data "
        f"(manifest.small_batches.points: {unit}, ms of each)."
    )
    return SmallBatches(fastest, limits[best], points), note


def probe_batches(data: Dataset) -> list[dict[str, np.ndarray]]:
    """Batches of 1 to 32 rows of the eval data: for text, the shortest, middling and
    longest inputs, each batch cut to its longest; otherwise the first rows."""
    from slimserve.data import length_order, padded_width

    order = length_order(data.inputs)
    count = len(data)
    batches = []
    for rows in PROBE_ROWS:
        if rows > count:
            break
        if order is None:
            batches.append({k: v[:rows] for k, v in data.inputs.items()})
            continue
        for start in sorted({0, (count - rows) // 2, count - rows}):
            picked = order[start : start + rows]
            mask = data.inputs["attention_mask"][picked]
            width = padded_width(mask)
            batches.append(
                {
                    k: v[picked][:, :width]
                    if v.shape == data.inputs["attention_mask"].shape
                    else v[picked]
                    for k, v in data.inputs.items()
                }
            )
    return batches


def probe_times(
    candidates: list[Candidate], data: Dataset, threads: int
) -> tuple[list[int], list[list[float]]]:
    """The probe batches' rows x tokens (ascending) and each candidate's median ms on
    each, every call of every candidate timed in the same interleaved rounds."""
    from functools import partial

    from slimserve.measure.timing import TIMED_SPINNING, run_rounds
    from slimserve.runtime import load_predictor
    from slimserve.runtime.routed import batch_tokens

    predictors = [
        load_predictor(c.stage.model, threads, spinning=TIMED_SPINNING)  # type: ignore[arg-type]
        for c in candidates
    ]
    batches = probe_batches(data.renamed(predictors[0].input_names))
    batches = sorted((b for b in batches if batch_tokens(b) <= PROBE_MAX_WORK), key=batch_tokens)
    calls: dict[str, Callable[[], object]] = {
        f"{i}/{j}": partial(predictor.predict, batch)
        for j, batch in enumerate(batches)
        for i, predictor in enumerate(predictors)
    }
    timed = run_rounds(calls, rounds=3, calls_per_pass=2, warmup=3)
    ms = [
        [1e3 * float(np.median(timed[f"{i}/{j}"].round_s)) for j in range(len(batches))]
        for i in range(len(predictors))
    ]
    return [batch_tokens(b) for b in batches], ms
