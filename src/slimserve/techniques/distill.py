"""Knowledge distillation from the original model: the output loss (KL, MSE or cosine)
and forward-hook taps for layer-wise distillation of same-named modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimserve.core.errors import DataError


class LayerTaps:
    """Forward hooks that record the outputs of the same-named modules of the model and
    of the original, for layer-wise distillation."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, patterns: tuple[str, ...]):
        self.names = matching_modules(student, patterns) if patterns else []
        self.outputs: dict[tuple[str, str], torch.Tensor] = {}
        self.handles: list[Any] = []
        if not self.names:
            return
        assert teacher is not None
        teacher_modules = dict(teacher.named_modules())
        student_modules = dict(student.named_modules())
        for name in self.names:
            if name not in teacher_modules:
                raise DataError(
                    f"distill_layers: '{name}' is in the model but not in the original, so "
                    "there is nothing to match it to. Pick modules that both have."
                )
            for side, found in (("student", student_modules), ("teacher", teacher_modules)):
                self.handles.append(found[name].register_forward_hook(self._keep(side, name)))

    def _keep(self, side: str, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            while isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[(side, name)] = output

        return hook

    def loss(self) -> torch.Tensor:
        """Mean over the taps of the MSE to the original's output, scaled by that
        output's mean square so that every layer counts alike whatever its magnitude."""
        losses = []
        for name in self.names:
            student, teacher = self.outputs[("student", name)], self.outputs[("teacher", name)]
            if student.shape != teacher.shape:
                raise DataError(
                    f"distill_layers: '{name}' gives {tuple(student.shape)} in the model but "
                    f"{tuple(teacher.shape)} in the original; layer distillation needs "
                    "outputs that keep their shape (the encoder layers under head pruning, "
                    "not channel-pruned layers)."
                )
            teacher = teacher.detach()
            scale = teacher.pow(2).mean().clamp(min=1e-12)
            losses.append(nn.functional.mse_loss(student, teacher) / scale)
        self.outputs.clear()
        return torch.stack(losses).mean()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def matching_modules(module: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the modules that match a pattern, outermost only (a match's children are
    skipped); an error naming a few modules when nothing matches."""
    import fnmatch

    names: list[str] = []
    for name, _ in module.named_modules():
        if not name or any(name.startswith(f"{kept}.") for kept in names):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            names.append(name)
    if not names:
        sample = [n for n, _ in module.named_modules() if n][:8]
        raise DataError(
            f"distill_layers {list(patterns)} match no module of the model. Module names "
            f"look like: {', '.join(sample)}."
        )
    return names


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float
) -> torch.Tensor:
    """The loss pulling the model's output towards the original's: ``kl`` (softened by
    ``temperature``, scaled by its square as Hinton et al.), ``mse`` or ``cosine``;
    ``auto`` is kl for class scores (2-D, more than one column), else cosine."""
    if kind == "auto":
        kind = "kl" if student.ndim == 2 and student.shape[1] > 1 else "cosine"
    if kind == "kl":
        t = temperature
        return nn.functional.kl_div(
            nn.functional.log_softmax(student / t, dim=-1),
            nn.functional.log_softmax(teacher / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
    if kind == "mse":
        return nn.functional.mse_loss(student, teacher)
    flat_s, flat_t = student.flatten(1), teacher.flatten(1)
    return (1 - nn.functional.cosine_similarity(flat_s, flat_t, dim=1)).mean()
