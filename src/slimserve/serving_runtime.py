"""The choice of what serves an artifact: among the runtimes that may serve the final
model (each chain's ONNX model in ONNX Runtime and OpenVINO, the torch program), the
fastest that meets the recipe's goal, measured in this run on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from slimserve.core.verdict import Verdict
    from slimserve.recipe import Recipe
    from slimserve.stages import Stage


RuntimeName = Literal["onnx", "torch", "openvino", "litert", "executorch"]
RUNTIME_LABELS: dict[str, str] = {
    "onnx": "ONNX Runtime",
    "torch": "PyTorch",
    "openvino": "OpenVINO",
    "litert": "LiteRT",
    "executorch": "ExecuTorch",
}


@dataclass(frozen=True)
class Candidate:
    """What may serve: a stage in a runtime, from one chain of steps (``chain`` indexes
    the recipe's alternatives; 0 without them)."""

    runtime: RuntimeName
    stage: Stage
    chain: int = 0


def choose_serving_runtime(
    recipe: Recipe, baseline: Stage, candidates: list[Candidate], reference: Candidate
) -> tuple[Candidate, str]:
    """Among ``candidates`` (each chain's ONNX model in ONNX Runtime and OpenVINO, the
    torch program), the fastest at the largest bench batch of those that meet the goal;
    ``reference`` (the first chain's ONNX model in ONNX Runtime) when none does. Returns
    the choice and a note saying why, with the ratios measured in this run."""
    if reference.runtime in ("litert", "executorch"):  # a device model: nothing to choose
        return reference, (
            f"Built for {RUNTIME_LABELS[reference.runtime]} (a device runtime): measured here "
            "in its runtime, not served over V2."
        )
    if len(candidates) == 1 and candidates[0] is not reference:
        only = candidates[0]
        return only, f"Serving the {only.stage.name}: the one runtime asked for."
    if len(candidates) == 1:
        return reference, ""
    batch = max(recipe.bench.batch_sizes)
    chains = len({c.chain for c in candidates}) > 1

    def label(c: Candidate) -> str:
        if c.runtime != "onnx":
            return c.stage.name
        if c is reference and not chains:
            return "ONNX model in ONNX Runtime"
        return f"{c.stage.name} in ONNX Runtime"

    def speed(c: Candidate) -> float:
        return float(c.stage.timings.get(batch, {}).get("items_per_s", 0.0))

    meets = {id(c): goal_verdict(recipe, baseline, c.stage).met for c in candidates}
    base = speed(reference)
    ratios = ", ".join(
        f"{label(c)} {speed(c) / base:.2f}x" + ("" if meets[id(c)] else " (misses the goal)")
        for c in candidates
        if c is not reference and base
    )
    passing = [c for c in candidates if meets[id(c)]]
    best = max(passing, key=speed) if passing else reference
    where = f"batch-{batch} throughput vs the {label(reference)}, same run: {ratios}"
    if best is reference:
        why = "" if passing else "; none of the others meets the goal"
        return best, f"Serving the {label(best)} ({where}{why})."
    return best, f"Serving the {label(best)}, the fastest within the goal ({where})."


def goal_verdict(recipe: Recipe, baseline: Stage, stage: Stage) -> Verdict:
    from slimserve.core.verdict import verdict

    metric = recipe.goal.metric
    return verdict(
        metric, baseline.metrics.get(metric), stage.metrics.get(metric), recipe.goal.max_drop
    )
