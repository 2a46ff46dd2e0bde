"""The one goal check: did the metric drop more than the goal allows? Used by the
pipeline (the report's goal line, runtime choice), ``tune`` (accept or reject a
candidate), ``check`` (CI bounds) and the techniques that aim at the goal themselves
(quantization's float fallback, pruning's diagnosis): it sits on the lowest floor so
that every floor reads the same rule."""

from __future__ import annotations

from dataclasses import dataclass

FIDELITY_METRICS = ("cosine_mean", "top1_agreement", "greedy_agreement")
"""Measured against the original model's outputs: the original scores 1 by definition."""
LOWER_IS_BETTER = ("kl_divergence", "perplexity")
"""Metrics that get worse as they grow: their drop is how much they rose."""


def baseline_score(metric: str, measured: float | None) -> float | None:
    """What a candidate is compared with: 1.0 for a fidelity metric, 0.0 for the KL
    divergence (the original against itself), else the original's measured score (None
    when there was nothing to measure on)."""
    if metric == "kl_divergence":
        return 0.0
    return 1.0 if metric in FIDELITY_METRICS else measured


def lowest_acceptable(metric: str, measured: float, max_drop: float) -> float:
    """The lowest score that still meets the goal (``measured``: the original's score,
    ignored for a fidelity metric); the highest, for a metric where lower is better."""
    base = baseline_score(metric, measured)
    start = measured if base is None else base
    return start + max_drop if metric in LOWER_IS_BETTER else start - max_drop


@dataclass(frozen=True)
class Verdict:
    """One metric, before and after, against the largest allowed drop."""

    metric: str
    baseline: float | None
    value: float | None
    max_drop: float

    @property
    def checked(self) -> bool:
        return self.baseline is not None and self.value is not None

    @property
    def drop(self) -> float:
        """How much the metric fell (negative: it rose); 0 when unchecked."""
        if self.baseline is None or self.value is None:
            return 0.0
        if self.metric in LOWER_IS_BETTER:
            return self.value - self.baseline
        return self.baseline - self.value

    @property
    def met(self) -> bool:
        """True when inside the goal, or when there is nothing to check (speed decides)."""
        return self.drop <= self.max_drop

    def shortfall(self) -> str:
        """Why it failed, in one clause (empty when it did not)."""
        if self.met:
            return ""
        return (
            f"{self.metric} dropped {self.drop:.4f} ({self.baseline:.4f} -> {self.value:.4f}), "
            f"more than the allowed {self.max_drop:.4f}"
        )

    def describe(self) -> str:
        """The report's goal line."""
        if not self.checked:
            return f"Goal not checked: no '{self.metric}' measured (the recipe has no eval data)."
        if not self.met:
            return f"Goal missed: {self.shortfall()}."
        return (
            f"Goal met: {self.metric} {self.value:.4f} vs baseline {self.baseline:.4f} "
            f"(drop {self.drop:+.4f})."
        )


def verdict(metric: str, original: float | None, value: float | None, max_drop: float) -> Verdict:
    """The verdict on ``value`` against the original model's score (``original``; ignored
    for fidelity metrics, whose baseline is 1)."""
    return Verdict(metric, baseline_score(metric, original), value, max_drop)
