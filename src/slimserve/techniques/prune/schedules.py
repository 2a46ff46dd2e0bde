"""Pruning schedules with exactly TF Model Optimization's semantics.

``schedule(step) -> (update_masks_now, sparsity)``, as ``tfmot.sparsity.keras``'s
``ConstantSparsity`` and ``PolynomialDecay``: masks are updated only on steps where
``(step - begin_step) % frequency == 0`` inside ``[begin_step, end_step]``
(``end_step == -1`` means "forever" for ConstantSparsity).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _in_range(sparsity: float, name: str) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity}")


def should_prune_in_step(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    """TF-MOT's rule: inside [begin, end] (end -1 = no end) and on a frequency boundary."""
    in_range = step >= begin_step and (end_step < 0 or step <= end_step)
    return in_range and (step - begin_step) % frequency == 0


class ConstantSparsity(BaseModel):
    """The same sparsity at every update step in ``[begin_step, end_step]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    target_sparsity: float = Field(..., description="Fraction of weights set to zero, in [0, 1).")
    begin_step: int = Field(0, description="First step at which masks are updated (>= 0).")
    end_step: int = Field(-1, description="Last update step; -1 keeps pruning until the end.")
    frequency: int = Field(100, description="Update the masks every `frequency` steps (> 0).")

    def __init__(self, *args: Any, **data: Any) -> None:
        _with_positional(type(self), args, data)
        super().__init__(**data)

    @model_validator(mode="after")
    def _check(self) -> ConstantSparsity:
        _in_range(self.target_sparsity, "target_sparsity")
        _check_steps(self.begin_step, self.end_step, self.frequency, allow_no_end=True)
        return self

    def __call__(self, step: int) -> tuple[bool, float]:
        return (
            should_prune_in_step(step, self.begin_step, self.end_step, self.frequency),
            self.target_sparsity,
        )

    @property
    def final_sparsity(self) -> float:
        return self.target_sparsity


class PolynomialDecay(BaseModel):
    """sparsity(t) = final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    initial_sparsity: float = Field(0.0, description="Sparsity at begin_step, in [0, 1).")
    final_sparsity: float = Field(..., description="Sparsity reached at end_step, in [0, 1).")
    begin_step: int = Field(0, description="First step at which masks are updated (>= 0).")
    end_step: int = Field(..., description="Step at which final_sparsity is reached (> begin).")
    power: float = Field(3, description="Exponent: 3 prunes fast early and slowly late.")
    frequency: int = Field(100, description="Update the masks every `frequency` steps (> 0).")

    def __init__(self, *args: Any, **data: Any) -> None:
        _with_positional(type(self), args, data)
        super().__init__(**data)

    @model_validator(mode="after")
    def _check(self) -> PolynomialDecay:
        _in_range(self.initial_sparsity, "initial_sparsity")
        _in_range(self.final_sparsity, "final_sparsity")
        _check_steps(self.begin_step, self.end_step, self.frequency, allow_no_end=False)
        return self

    def sparsity(self, step: int) -> float:
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        progress = min(1.0, max(0.0, progress))
        initial, final = self.initial_sparsity, self.final_sparsity
        return float(final + (initial - final) * (1.0 - progress) ** self.power)

    def __call__(self, step: int) -> tuple[bool, float]:
        return (
            should_prune_in_step(step, self.begin_step, self.end_step, self.frequency),
            self.sparsity(step),
        )


def _with_positional(cls: type[BaseModel], args: tuple[Any, ...], data: dict[str, Any]) -> None:
    """TF-MOT's schedules take positional arguments (``ConstantSparsity(0.5, 0)``): map them
    onto the fields in declaration order, so that migrating code keeps working."""
    names = list(cls.model_fields)
    if len(args) > len(names):
        raise TypeError(f"{cls.__name__} takes at most {len(names)} arguments ({', '.join(names)})")
    for name, value in zip(names, args, strict=False):
        if name in data:
            raise TypeError(f"{cls.__name__} got '{name}' both by position and by keyword")
        data[name] = value


def _check_steps(begin_step: int, end_step: int, frequency: int, allow_no_end: bool) -> None:
    if begin_step < 0:
        raise ValueError(f"begin_step must be >= 0, got {begin_step}")
    if end_step == -1 and not allow_no_end:
        raise ValueError("end_step cannot be -1: the decay needs a step to reach final_sparsity")
    if end_step != -1:
        if end_step < 0:
            raise ValueError(f"end_step must be -1 or >= 0, got {end_step}")
        if end_step < begin_step or (end_step == begin_step and not allow_no_end):
            raise ValueError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    if frequency <= 0:
        raise ValueError(f"frequency must be > 0, got {frequency}")


Schedule = ConstantSparsity | PolynomialDecay


class ScheduleSpec(BaseModel):
    """A schedule in a recipe: one key naming it, e.g. ``{polynomial_decay: {...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    polynomial_decay: PolynomialDecay | None = Field(
        None, description="TF-MOT PolynomialDecay: ramp from initial to final sparsity."
    )
    constant_sparsity: ConstantSparsity | None = Field(
        None, description="TF-MOT ConstantSparsity: one target sparsity."
    )

    @model_validator(mode="after")
    def _one(self) -> ScheduleSpec:
        if (self.polynomial_decay is None) == (self.constant_sparsity is None):
            raise ValueError("give exactly one of polynomial_decay, constant_sparsity")
        return self

    @property
    def schedule(self) -> Schedule:
        chosen = self.polynomial_decay or self.constant_sparsity
        assert chosen is not None
        return chosen
