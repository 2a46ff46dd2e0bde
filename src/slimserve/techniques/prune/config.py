"""The ``prune`` recipe step's config: one frozen config for the four granularities,
since they share every knob but ``n_m`` (the schedule, scope, exclusions, fine-tuning)
and a recipe names them with one key, ``granularity``. What the step does is
``prune/train.py``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimserve.techniques.finetune import FinetuneConfig
from slimserve.techniques.prune.schedules import ConstantSparsity, Schedule, ScheduleSpec
from slimserve.techniques.prune.structured import Importance

if TYPE_CHECKING:
    from slimserve.core.context import Context
    from slimserve.models.torch import TorchModel


class PruneConfig(BaseModel):
    """Prune a torch model: unstructured or N:M masks, or whole channels removed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "prune"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "torch"
    trains: ClassVar[bool] = True

    granularity: Literal["unstructured", "n:m", "channel", "head"] = Field(
        "unstructured",
        description="What is removed: single weights, N of every M, channels/neurons, or "
        "attention heads + FFN neurons of a BERT-style encoder.",
    )
    scope: Literal["layer", "global"] = Field(
        "layer", description="Same sparsity per layer, or one threshold across layers."
    )
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="One-shot target (instead of a schedule)."
    )
    schedule: ScheduleSpec | None = Field(None, description="TF-MOT schedule (gradual pruning).")
    n_m: str = Field("2:4", description="For n:m: keep N of every M consecutive input weights.")
    importance: Importance = Field(
        "l1", description="Channel ranking: l1/l2 magnitude or first-order taylor."
    )
    exclude: tuple[str, ...] = Field((), description="Layer-name patterns kept dense (fnmatch).")
    overrides: dict[str, float] = Field(
        default_factory=dict,
        description="Per-layer final sparsity, {name pattern: sparsity}; scope layer only.",
    )
    prune_classifier: bool = Field(False, description="Also prune the final Linear layer.")
    finetune: FinetuneConfig | None = Field(None, description="Fine-tune while pruning.")

    @field_validator("n_m")
    @classmethod
    def _n_m(cls, value: str) -> str:
        match = re.fullmatch(r"(\d+):(\d+)", value)
        if not match or not 0 < int(match[1]) < int(match[2]):
            raise ValueError(f"n_m is 'N:M' with 0 < N < M, e.g. '2:4', got {value!r}")
        return value

    @model_validator(mode="after")
    def _target(self) -> PruneConfig:
        if self.granularity != "n:m" and (self.sparsity is None) == (self.schedule is None):
            raise ValueError("give exactly one of 'sparsity' (one-shot) and 'schedule'")
        if self.granularity == "n:m" and self.sparsity is not None:
            raise ValueError("n:m fixes the sparsity (1 - N/M); use 'n_m', not 'sparsity'")
        return self

    @property
    def pattern(self) -> tuple[int, int]:
        n, m = self.n_m.split(":")
        return int(n), int(m)

    def resolved_schedule(self) -> Schedule:
        if self.schedule is not None:
            return self.schedule.schedule
        if self.granularity == "n:m":
            n, m = self.pattern
            return ConstantSparsity(target_sparsity=1 - n / m, begin_step=0, end_step=0)
        assert self.sparsity is not None
        return ConstantSparsity(target_sparsity=self.sparsity, begin_step=0, end_step=0)

    def describe(self) -> str:
        """A short label for tables: 'prune channel 50%', 'prune 2:4', ..."""
        if self.granularity == "n:m":
            return f"prune {self.n_m}"
        if self.granularity == "head":
            return f"prune heads+ffn {self.resolved_schedule().final_sparsity:.0%}"
        target = self.resolved_schedule().final_sparsity
        return f"prune {self.granularity} {target:.0%}"

    def apply(self, model: TorchModel, ctx: Context) -> TorchModel:
        from slimserve.techniques.prune.train import prune_model

        return prune_model(model, self, ctx)
