"""The CI gate: re-measure an artifact against the baseline its manifest names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimserve.core.errors import SlimserveError


@dataclass(frozen=True)
class Bounds:
    """What an artifact must keep: quality drop, speed-up and size ratio vs baseline."""

    max_drop: float | None = None
    min_speedup: float | None = None
    max_size_ratio: float | None = None
    batch_size: int | None = None
    repeats: int = 100


@dataclass
class BoundResult:
    """One bound as CI reports show it: what was required, what was measured (with its
    spread across timing rounds, for speed), and the outcome."""

    name: str
    required: str
    measured: str
    status: str  # passed | failed | undecided
    message: str = ""
    noise: str = ""


@dataclass
class CheckResult:
    metric: str
    baseline: float
    candidate: float
    speedup: float
    size_ratio: float
    batch_size: int
    failures: list[str] = field(default_factory=list)
    # Bounds the measurement cannot decide: the speed-up's spread across rounds straddles
    # the bound, or other processes took the CPU (CLI exit code 3, neither pass nor fail).
    undecided: list[str] = field(default_factory=list)
    speedup_range: tuple[float, float] = (0.0, 0.0)
    contended: bool = False
    bounds: list[BoundResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.undecided


def check_artifact(path: str | Path, bounds: Bounds, threads: int = 2) -> CheckResult:
    """Load the artifact (hashes verified) and its source model, measure both on the
    recipe's eval data in one interleaved run, and compare with ``bounds``."""
    from slimserve.artifact import load_artifact
    from slimserve.core.verdict import verdict
    from slimserve.data import load_data
    from slimserve.loading import load_model, tokenizer_folder
    from slimserve.measure.bench import bench_interleaved
    from slimserve.measure.evaluate import evaluate
    from slimserve.measure.summary import model_size
    from slimserve.measure.timing import TIMED_SPINNING
    from slimserve.models import LlmModel
    from slimserve.recipe import parse_recipe
    from slimserve.runtime import for_artifact, load_predictor, predict_all

    artifact = load_artifact(path)
    recipe = parse_recipe(artifact.manifest.recipe, source=f"{path}/manifest.json")
    spec = recipe.data.eval or recipe.data.calibration
    if spec is None:
        raise SlimserveError(
            f"{path}: the recipe has no eval data, so there is nothing to re-measure on. "
            "Add data.eval to the recipe and optimize again."
        )
    baseline = load_model(recipe.model)
    data = load_data(spec, tokenizer_folder(recipe.model) if spec.is_text else None)
    base_predictor = load_predictor(baseline, threads, spinning=TIMED_SPINNING)
    # What is served, as it is served.
    candidate_predictor = for_artifact(artifact, threads, spinning=TIMED_SPINNING)
    data = data.renamed(candidate_predictor.input_names)
    metric = recipe.goal.metric if data.labels is not None else "cosine_mean"
    reference = predict_all(base_predictor, data) if metric != "accuracy" else None
    original = None if reference is not None else evaluate(base_predictor, data)[metric]
    score = evaluate(candidate_predictor, data, reference)[metric]
    batch = bounds.batch_size or max(recipe.bench.batch_sizes)
    timings = bench_interleaved(
        {"baseline": base_predictor, "artifact": candidate_predictor},
        data,
        (batch,),
        warmup=10,
        repeats=bounds.repeats,
    )
    ratio = timings["artifact"][batch].speedup_over(timings["baseline"][batch])
    onnx_model = artifact.model
    assert not isinstance(onnx_model, LlmModel)  # for_artifact refused a decoder LM above
    size_ratio = model_size(onnx_model)[0] / model_size(baseline)[0]  # type: ignore[arg-type]
    max_drop = bounds.max_drop if bounds.max_drop is not None else recipe.goal.max_drop
    judged = verdict(metric, original, score, max_drop)
    base_score = judged.baseline if judged.baseline is not None else score
    result = CheckResult(metric, base_score, score, ratio.median, size_ratio, batch)
    result.speedup_range = (ratio.low, ratio.high)
    result.contended = ratio.contended
    if not judged.met:
        result.failures.append(judged.shortfall())
    result.bounds.append(
        BoundResult(
            f"{metric} drop",
            f"<= {max_drop:g}",
            f"{base_score - score:.4f} ({base_score:.4f} -> {score:.4f})",
            "passed" if judged.met else "failed",
            "" if judged.met else judged.shortfall(),
        )
    )
    if bounds.min_speedup is not None:
        before = (len(result.failures), len(result.undecided))
        _check_speedup(result, ratio, bounds.min_speedup)
        status = (
            "failed"
            if len(result.failures) > before[0]
            else "undecided"
            if len(result.undecided) > before[1]
            else "passed"
        )
        message = {"failed": result.failures, "undecided": result.undecided}.get(status, [""])
        result.bounds.append(
            BoundResult(
                f"batch-{batch} speed-up",
                f">= {bounds.min_speedup:g}x",
                f"{ratio.median:.2f}x",
                status,
                message[-1],
                f"{ratio.low:.2f}x-{ratio.high:.2f}x across rounds"
                + ("; contended" if ratio.contended else ""),
            )
        )
    if bounds.max_size_ratio is not None:
        too_big = size_ratio > bounds.max_size_ratio
        if too_big:
            result.failures.append(
                f"the model is {size_ratio:.2f}x the baseline's size, above the allowed "
                f"{bounds.max_size_ratio:.2f}x"
            )
        result.bounds.append(
            BoundResult(
                "size ratio",
                f"<= {bounds.max_size_ratio:g}",
                f"{size_ratio:.3f}",
                "failed" if too_big else "passed",
                result.failures[-1] if too_big else "",
            )
        )
    return result


def check_json(result: CheckResult, artifact: str | Path) -> dict[str, Any]:
    """The check as one JSON object (``slimserve check --json``)."""
    from dataclasses import asdict

    status = "failed" if result.failures else "undecided" if result.undecided else "passed"
    return {
        "artifact": str(artifact),
        "status": status,
        "metric": result.metric,
        "baseline": result.baseline,
        "candidate": result.candidate,
        "speedup": result.speedup,
        "speedup_range": list(result.speedup_range),
        "contended": result.contended,
        "size_ratio": result.size_ratio,
        "batch_size": result.batch_size,
        "bounds": [asdict(b) for b in result.bounds],
    }


def junit_xml(result: CheckResult, artifact: str | Path, seconds: float) -> str:
    """A JUnit XML report (``slimserve check --junit FILE``): one test case per bound, a
    failure for a failed bound, a skip for one the timing could not decide."""
    import xml.etree.ElementTree as ET

    suite = ET.Element(
        "testsuite",
        name=f"slimserve check {artifact}",
        tests=str(len(result.bounds)),
        failures=str(sum(b.status == "failed" for b in result.bounds)),
        skipped=str(sum(b.status == "undecided" for b in result.bounds)),
        errors="0",
        time=f"{seconds:.3f}",
    )
    for bound in result.bounds:
        case = ET.SubElement(suite, "testcase", classname="slimserve.check", name=bound.name)
        detail = f"required {bound.required}, measured {bound.measured}"
        if bound.noise:
            detail += f" (noise: {bound.noise})"
        if bound.status == "failed":
            ET.SubElement(case, "failure", message=bound.message).text = detail
        elif bound.status == "undecided":
            ET.SubElement(case, "skipped", message=bound.message).text = detail
        ET.SubElement(case, "system-out").text = detail
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode")


def _check_speedup(result: CheckResult, ratio: Any, bound: float) -> None:
    """Pass when even the slow rounds clear the bound, fail when even the fast ones
    miss it; in between (or contended) the run cannot decide."""
    batch = result.batch_size
    if ratio.contended:
        result.undecided.append(
            f"batch-{batch} speed-up: other processes took over a quarter of the CPU during "
            "the timing, so it is too noisy to decide; run check again on a quiet machine"
        )
    elif ratio.low >= bound:
        return
    elif ratio.high < bound:
        result.failures.append(
            f"batch-{batch} throughput is {ratio.median:.2f}x the baseline's "
            f"({ratio.low:.2f}x-{ratio.high:.2f}x across rounds), below the required {bound:.2f}x"
        )
    else:
        result.undecided.append(
            f"batch-{batch} speed-up is {ratio.median:.2f}x but ranges {ratio.low:.2f}x-"
            f"{ratio.high:.2f}x across rounds, around the required {bound:.2f}x: too noisy to "
            "decide; raise --repeats or run on a quieter machine"
        )
