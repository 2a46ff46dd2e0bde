"""Magnitude masks (unstructured per layer or global, N:M) and the Pruner that holds them.

Masks are applied with ``torch.nn.utils.prune`` (weight = weight_orig * weight_mask in a
forward pre-hook), so they hold through every optimizer step; ``finalize`` bakes the
zeros in. As in TF-MOT, new masks are computed from the masked weights, so a pruned
weight stays pruned while the schedule only raises sparsity.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import prune as torch_prune

from slimserve.core.errors import SlimserveError
from slimserve.techniques.prune.schedules import Schedule

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Granularity = Literal["unstructured", "n:m"]
Scope = Literal["layer", "global"]


class MaskOptions(BaseModel):
    """Which layers get masks and how (the knobs ``attach`` takes beside the schedule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    exclude: tuple[str, ...] = Field((), description="Layer-name fnmatch patterns to skip.")
    prune_classifier: bool = Field(False, description="Prune the final Linear layer too.")
    n_m: tuple[int, int] = Field((2, 4), description="N:M pattern as (kept, group).")
    overrides: dict[str, float] = Field(
        default_factory=dict, description="{layer pattern: final sparsity}; layer scope only."
    )


def prunable_layers(
    module: nn.Module, exclude: Iterable[str] = (), prune_classifier: bool = False
) -> dict[str, nn.Module]:
    """Linear/Conv layers by name, minus ``exclude`` (fnmatch patterns) and, unless asked,
    the final classifier (the last Linear layer), which TF-MOT users also keep dense."""
    layers = {n: m for n, m in module.named_modules() if isinstance(m, PRUNABLE) and n}
    if not prune_classifier:
        linears = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
        if linears:
            layers.pop(linears[-1])
    patterns = list(exclude)
    return {n: m for n, m in layers.items() if not any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``round(size * (1 - sparsity))`` (at least 1) largest |w|; zero the rest."""
    count = weight.numel()
    keep = max(1, round(count * (1.0 - sparsity)))
    mask = torch.zeros(count, dtype=weight.dtype, device=weight.device)
    mask[torch.topk(weight.detach().abs().flatten(), keep, sorted=False).indices] = 1
    return mask.view_as(weight)


def block_mask(
    weight: torch.Tensor,
    sparsity: float,
    block_size: tuple[int, int],
    pooling: Literal["AVG", "MAX"] = "AVG",
) -> torch.Tensor:
    """TF-MOT's block sparsity for a rank-2 weight: |w| is pooled (mean or max) over
    non-overlapping ``block_size`` blocks, and whole blocks are kept or zeroed by magnitude.
    Edge blocks that overhang the weight pool over the part inside it, as TF's SAME padding.
    """
    if weight.dim() != 2:
        raise SlimserveError(
            f"Block sparsity needs a 2-D weight, got shape {tuple(weight.shape)}; "
            "use block_size=(1, 1) for this layer."
        )
    height, width = block_size
    pool = torch.nn.functional.avg_pool2d if pooling == "AVG" else torch.nn.functional.max_pool2d
    pooled = pool(weight.detach().abs()[None, None], block_size, block_size, ceil_mode=True)[0, 0]
    kept_blocks = magnitude_mask(pooled, sparsity)
    mask = kept_blocks.repeat_interleave(height, 0).repeat_interleave(width, 1)
    return mask[: weight.shape[0], : weight.shape[1]].contiguous()


def global_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold across all layers: layers lose what matters least overall."""
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    keep = max(1, round(flat.numel() * (1.0 - sparsity)))
    keep_flat = torch.zeros_like(flat)
    keep_flat[torch.topk(flat, keep, sorted=False).indices] = 1
    masks, start = {}, 0
    for name, weight in weights.items():
        masks[name] = keep_flat[start : start + weight.numel()].view_as(weight)
        start += weight.numel()
    return masks


def n_m_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest |w| in every group of ``m`` consecutive input weights.

    The groups run along the input dimension (for a conv, the input channels at each
    kernel position), the layout sparse tensor cores and ORT's sparse kernels expect.
    """
    in_dim = weight.shape[1]
    if in_dim % m:
        raise SlimserveError(f"input dimension {in_dim} is not a multiple of {m}")
    moved = weight.detach().abs().movedim(1, -1)  # (out, k..., in)
    groups = moved.reshape(-1, m)
    keep = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, keep, 1.0)
    return mask.reshape(moved.shape).movedim(-1, 1).contiguous()


@dataclass
class Update:
    """One schedule update: what the masks became and how much each layer lost."""

    step: int
    sparsity: float
    layer_sparsity: dict[str, float]
    magnitude_lost: dict[str, float]


@dataclass
class Pruner:
    """Masks on a module's layers, advanced by a TF-MOT schedule. Made by ``attach``."""

    module: nn.Module
    schedule: Schedule | None
    layers: dict[str, nn.Module]
    granularity: Granularity = "unstructured"
    scope: Scope = "layer"
    n_m: tuple[int, int] = (2, 4)
    step: int = -1
    updates: list[Update] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, float] = field(default_factory=dict)

    def weights(self) -> dict[str, torch.Tensor]:
        """The effective (masked) weights: what the model computes with."""
        return {
            name: _tensor(layer, "weight_orig").detach() * _tensor(layer, "weight_mask")
            for name, layer in self.layers.items()
        }

    def update(self, step: int | None = None) -> bool:
        """Advance to ``step`` (default: the next one); recompute masks if the schedule
        says so at this step. Returns whether the masks changed."""
        self.step = self.step + 1 if step is None else step
        if self.schedule is None:
            return False
        update_now, sparsity = self.schedule(self.step)
        if update_now:
            self.apply(sparsity)
        return update_now

    def apply(self, sparsity: float) -> None:
        """Set the masks for ``sparsity`` now (n:m ignores the number: its ratio is fixed)."""
        weights = self.weights()
        if self.granularity == "n:m":
            masks = {n: n_m_mask(w, *self.n_m) for n, w in weights.items()}
        elif self.scope == "global":
            masks = global_masks(weights, sparsity)
        else:
            masks = {
                n: magnitude_mask(w, self.layer_target(n, sparsity)) for n, w in weights.items()
            }
        lost = {}
        for name, mask in masks.items():
            old = weights[name].abs()
            total = float(old.sum()) or 1.0
            lost[name] = float((old * (1 - mask)).sum()) / total
            _tensor(self.layers[name], "weight_mask").copy_(mask)
        self.updates.append(Update(self.step, sparsity, self.layer_sparsity(), lost))

    def layer_target(self, name: str, sparsity: float) -> float:
        """A layer's sparsity now: the schedule's, scaled to its override's final value."""
        final = self.schedule.final_sparsity if self.schedule is not None else sparsity
        if name not in self.overrides or final <= 0:
            return sparsity
        return min(self.overrides[name] * sparsity / final, 0.999)

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - float(_kept(layer).mean()) for name, layer in self.layers.items()}

    def sparsity(self) -> float:
        """Fraction of zeros over all pruned layers' weights."""
        masks = [_kept(layer) for layer in self.layers.values()]
        total = sum(m.numel() for m in masks)
        zeros = sum(float((1 - m).sum()) for m in masks)
        return zeros / total if total else 0.0

    def finalize(self) -> nn.Module:
        """Bake the zeros into plain ``weight`` parameters and remove the hooks."""
        for layer in self.layers.values():
            if torch_prune.is_pruned(layer):
                torch_prune.remove(layer, "weight")  # type: ignore[no-untyped-call]
        return self.module


def _tensor(layer: nn.Module, name: str) -> torch.Tensor:
    value = getattr(layer, name)
    assert isinstance(value, torch.Tensor)
    return value


def _kept(layer: nn.Module) -> torch.Tensor:
    """1 where a weight is kept: the mask while pruning, the nonzeros once finalized."""
    if torch_prune.is_pruned(layer):
        return _tensor(layer, "weight_mask")
    return (_tensor(layer, "weight") != 0).float()


def attach(
    module: nn.Module,
    schedule: Schedule | None,
    granularity: Granularity = "unstructured",
    scope: Scope = "layer",
    options: MaskOptions | None = None,
) -> Pruner:
    """Put all-ones masks on the prunable layers and return the Pruner that moves them."""
    opts = options or MaskOptions()
    layers = prunable_layers(module, opts.exclude, opts.prune_classifier)
    n, m = opts.n_m
    skipped = {}
    if granularity == "n:m":
        for name in list(layers):
            in_dim = _tensor(layers[name], "weight").shape[1]
            if in_dim % m:
                skipped[name] = f"{in_dim} inputs are not a multiple of {m}"
                layers.pop(name)
    if not layers:
        raise SlimserveError(
            "No layer is left to prune: every Linear/Conv layer is excluded (the final "
            "classifier is kept dense unless prune_classifier is set). Check 'exclude'."
        )
    overrides = resolve_overrides(layers, opts.overrides)
    if overrides and (scope == "global" or granularity == "n:m"):
        raise SlimserveError(
            "Per-layer sparsity overrides need scope: layer and unstructured or channel "
            "pruning (a global threshold or an N:M pattern decides per layer by itself)."
        )
    for layer in layers.values():
        ones = torch.ones_like(_tensor(layer, "weight"))
        torch_prune.custom_from_mask(layer, "weight", ones)  # type: ignore[no-untyped-call]
    return Pruner(
        module, schedule, layers, granularity, scope, (n, m), skipped=skipped, overrides=overrides
    )


def resolve_overrides(layers: dict[str, nn.Module], patterns: dict[str, float]) -> dict[str, float]:
    """{layer name: sparsity} from {fnmatch pattern: sparsity}; the last match wins.
    A pattern that matches no prunable layer is an error (a typo would pass silently)."""
    resolved: dict[str, float] = {}
    for pattern, value in patterns.items():
        matched = [n for n in layers if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise SlimserveError(
                f"Override '{pattern}' matches no prunable layer. Prunable layers: "
                f"{', '.join(layers)}."
            )
        if not 0 <= value < 1:
            raise SlimserveError(f"Override '{pattern}': sparsity must be in [0, 1), got {value}.")
        resolved.update(dict.fromkeys(matched, value))
    return resolved
