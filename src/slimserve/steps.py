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
    from slimserve.models import Model
    from slimserve.techniques import Technique


@dataclass(frozen=True)
class StepRun:
    """One step done: the step, the model it returned, what it logged, how long it took."""

    step: Technique
    model: Model
    log: StepLog
    seconds: float


def run_steps(
    steps: Sequence[Technique],
    model: Model,
    ctx: Context,
    starting: Callable[[Technique], None] | None = None,
    done: Callable[[StepRun], None] | None = None,
) -> Model:
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
