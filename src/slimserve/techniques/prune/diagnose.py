"""Why pruning hurt: a too-steep ramp (a spike after a sparsity increase) or a final
drop past the goal, with the step, the sparsity, the layers that lost most, and fixes."""

from __future__ import annotations

import math
from typing import Any

SPIKE_LOSS_RATIO = 2.0
SPIKE_LOSS_MIN = 0.1
SPIKE_METRIC_MIN = 0.03


def find_spikes(details: dict[str, Any], max_drop: float) -> list[dict[str, float]]:
    """Schedule updates after which the metric fell (or the loss jumped) sharply and
    training did not win it back before the next update (or the end).

    A dip that fine-tuning recovers is the schedule working; one that stays is the ramp
    outrunning the fine-tuning.
    """
    threshold = max(3 * max_drop, SPIKE_METRIC_MIN)
    spikes = []
    previous_sparsity = 0.0
    points = details.get("history", [])
    for index, point in enumerate(points):
        later = (
            points[index + 1].get("metric_before", math.nan)
            if index + 1 < len(points)
            else details.get("metric_after", math.nan)
        )
        before, after = point.get("metric_before", math.nan), point["metric_after_update"]
        loss_before, loss_after = point["loss_before"], point.get("loss_after", math.nan)
        metric_fall = before - after if not math.isnan(before) else 0.0
        loss_jump = (
            loss_after > SPIKE_LOSS_RATIO * loss_before
            and loss_after - loss_before > SPIKE_LOSS_MIN
            if not (math.isnan(loss_before) or math.isnan(loss_after))
            else False
        )
        recovered = not math.isnan(later) and not math.isnan(before) and before - later <= threshold
        if (metric_fall > threshold or loss_jump) and not recovered:
            spikes.append(
                {
                    **point,
                    "previous_sparsity": previous_sparsity,
                    "metric_fall": metric_fall,
                    "metric_later": later,
                }
            )
        previous_sparsity = point["sparsity"]
    return spikes


def _layers_lost_most(
    details: dict[str, Any], step: float, count: int = 3
) -> list[tuple[str, float]]:
    for update in details.get("updates", []):
        if update["step"] == step:
            lost = sorted(update["magnitude_lost"].items(), key=lambda kv: -kv[1])
            return [(name, value) for name, value in lost[:count] if value >= 0.005]
    return []


def diagnose(
    config: Any,
    details: dict[str, Any],
    metric: str,
    max_drop: float,
    train_samples: int | None = None,
) -> list[str]:
    """Warnings (empty when pruning went fine) that say what happened and what to try,
    in the step's own keys (values computed from the training data where it helps)."""
    notes = []
    schedule = config.schedule.schedule if config.schedule is not None else None
    end_step = getattr(schedule, "end_step", None)
    spikes = find_spikes(details, max_drop)
    if spikes:
        worst = max(spikes, key=lambda p: p["metric_fall"])
        layers = _layers_lost_most(details, worst["step"])
        named = ", ".join(f"{n} ({v:.0%} of its weight magnitude)" for n, v in layers)
        fixes = [
            f"a later end_step (now {end_step})" if end_step else "a gradual schedule",
            "a lower final_sparsity",
            "more finetune.epochs",
        ]
        if layers:
            fixes.append(f"exclude: {[n for n, _ in layers[:2]]}")
        notes.append(
            f"Warning: pruning ramp too steep at step {int(worst['step'])}: sparsity "
            f"{worst['previous_sparsity']:.0%} -> {worst['sparsity']:.0%}, {metric} "
            f"{worst['metric_before']:.3f} -> {worst['metric_after_update']:.3f} (and only "
            f"{worst['metric_later']:.3f} before the next update), loss "
            f"{worst['loss_before']:.3f} -> {worst.get('loss_after', math.nan):.3f}"
            + (f". Layers that lost most: {named}" if named else "")
            + f". Try {', '.join(fixes[:-1])} or {fixes[-1]}."
        )
    from slimserve.core.verdict import Verdict

    before, after = details.get("metric_before", math.nan), details.get("metric_after", math.nan)
    measured = not (math.isnan(before) or math.isnan(after))
    if measured and not Verdict(metric, before, after, max_drop).met:
        dropped = (
            f"Warning: after pruning, {metric} is {after:.4f} against {before:.4f} before "
            f"(drop {before - after:.4f}, goal allows {max_drop:.4f})."
        )
        if config.finetune is None:
            notes.append(f"{dropped} {_gradual_advice(config, train_samples)}")
        else:
            target = "schedule's final_sparsity" if schedule is not None else "sparsity"
            notes.append(
                f"{dropped} Try a lower {target}, more finetune.epochs (now "
                f"{config.finetune.epochs}), distillation (finetune.distill: 0.5), or "
                "exclude: [the most sensitive layers]."
            )
    return notes


def _gradual_advice(config: Any, train_samples: int | None) -> str:
    """For one-shot pruning: the gradual schedule with fine-tuning, TF-MOT's way, with
    an end_step that leaves the last third of the training to recover."""
    schedule = config.schedule.schedule if config.schedule is not None else None
    sparsity = getattr(schedule, "final_sparsity", None) or config.sparsity or 0.5
    if not train_samples:
        return (
            "It was pruned in one shot without fine-tuning: add data.train and prune "
            "gradually while fine-tuning (prune: {schedule: {polynomial_decay: "
            f"{{final_sparsity: {sparsity:g}, end_step: ..., frequency: ...}}}}, "
            "finetune: {epochs: 3})."
        )
    epochs, batch = 3, 64
    steps = math.ceil(train_samples / batch) * epochs
    end_step = max(1, (2 * steps) // 3)
    frequency = max(1, end_step // 10)
    return (
        "It was pruned in one shot without fine-tuning: prune gradually while fine-tuning "
        f"instead, e.g. prune: {{schedule: {{polynomial_decay: {{final_sparsity: "
        f"{sparsity:g}, end_step: {end_step}, frequency: {frequency}}}}}, finetune: "
        f"{{epochs: {epochs}}}}}. With {train_samples} train samples and batch_size {batch}, "
        f"{epochs} epochs are {steps} steps; end_step {end_step} leaves the last third to "
        "recover."
    )
