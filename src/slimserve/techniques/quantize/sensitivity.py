"""Per-node quantization sensitivity, and the fallback that keeps the fewest most
sensitive nodes in float so that the recipe's goal is met."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.context import Context
from slimserve.core.errors import DataError
from slimserve.data import Dataset
from slimserve.models.onnx import OnnxModel
from slimserve.techniques.quantize.ort import quantize_onnx

if TYPE_CHECKING:
    from slimserve.techniques.quantize.configs import IntegerQuantizeConfig

QUANTIZABLE = ("Conv", "Gemm", "MatMul")
EVAL_SAMPLES = 512


@dataclass(frozen=True)
class Judge:
    """Scores a model on the eval data with the goal's metric."""

    data: Dataset
    metric: str
    reference: np.ndarray | None
    threads: int

    def __call__(self, model: OnnxModel) -> float:
        from slimserve.core.metrics import score
        from slimserve.runtime import OrtPredictor, predict_all

        predictor = OrtPredictor(model, self.threads)
        outputs = predict_all(predictor, self.data)
        result = score(outputs, self.data.labels, self.reference, output_names=model.output_names)
        return float(result[self.metric])


def judge_for(model: OnnxModel, ctx: Context) -> Judge:
    """The goal's metric on (up to 512 samples of) the eval split; fidelity metrics
    compare with the original model's outputs."""
    from slimserve.runtime import load_predictor, predict_all

    data = ctx.split("eval", "calibration")
    if data is None:
        raise DataError(
            "fallback: auto needs eval data to measure quantization's effect: add data.eval."
        )
    data = data.renamed(model.input_names).take(EVAL_SAMPLES)
    metric = ctx.goal_metric
    if metric == "accuracy" and data.labels is None:
        metric = "cosine_mean"
    reference = None
    if metric != "accuracy":
        source = ctx.reference if ctx.reference is not None else model
        reference = predict_all(load_predictor(source, ctx.threads), data)
    return Judge(data, metric, reference, ctx.threads)


def quantizable_nodes(model: OnnxModel, config: IntegerQuantizeConfig) -> list[str]:
    types = config.op_types or QUANTIZABLE
    return [
        n.name
        for n in model.proto.graph.node
        if n.op_type in types and n.name and n.name not in config.exclude
    ]


def node_sensitivity(
    model: OnnxModel, config: IntegerQuantizeConfig, ctx: Context, judge: Judge
) -> list[tuple[str, float]]:
    """Quantize one node at a time; the metric lost by each, most sensitive first."""
    nodes = quantizable_nodes(model, config)
    calibration = ctx.split("calibration", "train")
    float_score = judge(model)
    drops = []
    for index, node in enumerate(nodes):
        ctx.progress(f"sensitivity: node {index + 1}/{len(nodes)} {node}", index / len(nodes))
        others = tuple(n for n in nodes if n != node)
        single = config.model_copy(update={"exclude": (*config.exclude, *others)})
        quantized = quantize_onnx(model, single, calibration, ctx.work_dir)
        drops.append((node, float_score - judge(quantized)))
    return sorted(drops, key=lambda item: -item[1])


def quantize_with_fallback(
    model: OnnxModel, config: IntegerQuantizeConfig, ctx: Context
) -> OnnxModel:
    """Quantize fully; if the goal is missed, keep the most sensitive nodes in float,
    as few as it takes (doubling, then bisecting, the count)."""
    plain = config.model_copy(update={"fallback": "none"})
    calibration = ctx.split("calibration", "train") if config.mode == "static" else None
    judge = judge_for(model, ctx)
    target = _target(model, ctx, judge)
    quantized = quantize_onnx(model, plain, calibration, ctx.work_dir)
    score = judge(quantized)
    details: dict[str, Any] = {
        "fallback_metric": judge.metric,
        "fallback_target": target,
        "attempts": [{"float_nodes": 0, "metric": score}],
    }
    ctx.log.details.update(details)
    if score >= target:
        details["float_nodes"] = []
        ctx.log.details.update(details)
        return quantized
    ranking = node_sensitivity(model, plain, ctx, judge)
    details["sensitivity"] = [{"node": n, "drop": d} for n, d in ranking]
    tried: dict[int, tuple[OnnxModel, float]] = {}

    def attempt(count: int) -> float:
        excluded = tuple(n for n, _ in ranking[:count])
        candidate = plain.model_copy(update={"exclude": (*plain.exclude, *excluded)})
        result = quantize_onnx(model, candidate, calibration, ctx.work_dir)
        tried[count] = (result, judge(result))
        details["attempts"].append({"float_nodes": count, "metric": tried[count][1]})
        return tried[count][1]

    low, high = 0, None
    for count in _doubling(len(ranking)):
        if attempt(count) >= target:
            high = count
            break
        low = count
    if high is not None:
        while high - low > 1:  # the fewest float nodes that still meet the target
            middle = (low + high) // 2
            if attempt(middle) >= target:
                high = middle
            else:
                low = middle
        best = high
        excluded = [n for n, _ in ranking[:best]]
        ctx.log.notes.append(
            f"Fallback: kept {best} of {len(ranking)} quantizable nodes in float "
            f"({', '.join(excluded)}) so that {judge.metric} is {tried[best][1]:.4f} "
            f">= {target:.4f}; fully quantized it was {score:.4f}."
        )
    else:
        best = max(tried, key=lambda k: tried[k][1])
        excluded = [n for n, _ in ranking[:best]]
        ctx.log.notes.append(
            f"Warning: fallback could not meet the goal: even with all {len(ranking)} "
            f"quantizable nodes in float, {judge.metric} is {tried[len(ranking)][1]:.4f} < "
            f"{target:.4f}. The loss comes from earlier steps, not quantization."
        )
    details["float_nodes"] = excluded
    ctx.log.details.update(details)
    return tried[best][0]


def _target(model: OnnxModel, ctx: Context, judge: Judge) -> float:
    """The lowest acceptable score: the original model's minus the goal's max drop."""
    from slimserve.core.verdict import lowest_acceptable

    if judge.metric != "accuracy":  # scored against the original's outputs: it scores 1
        return lowest_acceptable(judge.metric, 1.0, ctx.max_drop)
    from slimserve.core.metrics import score
    from slimserve.runtime import load_predictor, predict_all

    source = ctx.reference if ctx.reference is not None else model
    outputs = predict_all(load_predictor(source, ctx.threads), judge.data)
    baseline = score(outputs, judge.data.labels)["accuracy"]
    return lowest_acceptable(judge.metric, float(baseline), ctx.max_drop)


def _doubling(limit: int) -> list[int]:
    """1, 2, 4, ... up to and including ``limit``."""
    counts, count = [], 1
    while count < limit:
        counts.append(count)
        count *= 2
    return [*counts, limit] if limit else []
