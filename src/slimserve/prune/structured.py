"""Structured pruning: remove whole output channels / neurons, physically.

torch-pruning's dependency graph finds every layer that must shrink with a pruned
channel (the next layer's inputs, BatchNorm, residual partners), so the pruned model
is a smaller dense model that runs faster anywhere. We only choose what to remove,
when (the TF-MOT schedule), and keep the classifier's outputs intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from slimserve.errors import MissingExtraError

Importance = Literal["l1", "l2", "taylor"]


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:  # a core dependency; a broken install gets the fix
        raise MissingExtraError("torch-pruning", "prune", "Channel pruning") from exc
    return torch_pruning


def importance(kind: Importance) -> Any:
    """L1/L2 magnitude of each channel group, or first-order Taylor (|w * grad|)."""
    tp = _torch_pruning()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if kind == "l1" else 2)


@dataclass(frozen=True)
class ChannelLayers:
    """Which layers channel pruning leaves alone, and per-layer final ratios."""

    ignored: Sequence[nn.Module] = ()
    overrides: dict[nn.Module, float] = field(default_factory=dict)
    global_pruning: bool = False


def channel_pruner(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    ratios: Sequence[float],
    kind: Importance = "l1",
    layers: ChannelLayers | None = None,
) -> Any:
    """A torch-pruning MetaPruner whose k-th ``step()`` brings every prunable layer to
    ``ratios[k]`` of its output channels removed (ratios from the TF-MOT schedule); a
    layer with an override follows the same ramp scaled to its own final ratio."""
    tp = _torch_pruning()
    layers = layers or ChannelLayers()
    final = max(ratios) if ratios else 0.0

    def scheduler(ratio: float, steps: int) -> list[float]:
        scale = ratio / final if final > 0 else 0.0
        return [0.0, *(r * scale for r in ratios)]

    return tp.pruner.MetaPruner(
        module,
        tuple(example_inputs),
        importance=importance(kind),
        global_pruning=layers.global_pruning,
        pruning_ratio=final,
        pruning_ratio_dict=dict(layers.overrides) or None,
        iterative_steps=len(ratios),
        iterative_pruning_ratio_scheduler=scheduler,
        ignored_layers=list(layers.ignored),
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def output_channels(module: nn.Module) -> dict[str, int]:
    """Output channels (conv) or neurons (linear) per layer: what channel pruning shrinks."""
    result = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            result[name] = layer.out_channels
        elif isinstance(layer, nn.Linear):
            result[name] = layer.out_features
    return result
