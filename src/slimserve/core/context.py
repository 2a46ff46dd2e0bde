"""The frozen context every technique's ``apply`` receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.models import Model

ProgressFn = Callable[[str, float], None]
"""Called with a message and a fraction in [0, 1] while a step works."""


def _no_progress(message: str, fraction: float) -> None:
    """Default progress sink: techniques report, nobody listens."""


@dataclass
class StepLog:
    """What a step wants kept besides its model: notes for people, details for plots."""

    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """Data splits, the original model, a work folder, a seed and a progress sink."""

    data: dict[str, Dataset] = field(default_factory=dict)
    reference: Model | None = None
    work_dir: Path = Path(".")
    seed: int = 0
    threads: int = 2
    progress: ProgressFn = _no_progress
    goal_metric: str = "accuracy"
    max_drop: float = 0.01
    log: StepLog = field(default_factory=StepLog)
    calibration_text: str | None = None  # a decoder LM's calibration prose
    train_text: str | None = None  # a decoder LM's training prose (distillation)

    def split(self, *names: str) -> Dataset | None:
        """The first of the named data splits that the recipe defines."""
        for name in names:
            if name in self.data:
                return self.data[name]
        return None
