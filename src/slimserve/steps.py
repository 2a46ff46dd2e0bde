"""Running planned steps one after another: the one step loop, used by the pipeline
(``optimize``) and by ``tune`` for each candidate it builds."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from slimserve.core.context import Context, StepLog

if TYPE_CHECKING:
    from slimserve.artifact import StepRecord
    from slimserve.models import AnyModel
    from slimserve.techniques import Technique


@dataclass(frozen=True)
class StepRun:
    """One step done: the step, the model it returned, what it logged, how long it took."""

    step: Technique
    model: AnyModel
    log: StepLog
    seconds: float

    def record(self, metrics: dict[str, float]) -> StepRecord:
        """What the manifest keeps of the step, with the metrics of its model."""
        from slimserve.artifact import StepRecord

        return StepRecord(
            name=self.step.name,
            config=self.step.model_dump(mode="json"),
            duration_s=round(self.seconds, 3),
            metrics=metrics,
            notes=self.log.notes,
            details=self.log.details,
        )


def run_steps(
    steps: Sequence[Technique],
    model: AnyModel,
    ctx: Context,
    starting: Callable[[Technique], None] | None = None,
    done: Callable[[StepRun], None] | None = None,
) -> AnyModel:
    """Apply ``steps`` in order (each on a copy of a PyTorch model, so the one before
    stays intact for the comparison) and return the last model. ``starting`` hears of a
    step before it runs, ``done`` after, with its model, log and duration."""
    current = model
    for step in steps:
        if starting is not None:
            starting(step)
        started = time.perf_counter()
        source = copy.deepcopy(current) if current.format == "torch" else current
        log = StepLog()
        current = step.apply(source, replace(ctx, log=log))
        if done is not None:
            done(StepRun(step, current, log, time.perf_counter() - started))
    return current
