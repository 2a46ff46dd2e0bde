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

from slimserve.core.errors import MissingExtraError, SlimserveError

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
    num_heads: dict[nn.Module, int] = field(default_factory=dict)


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

    pruner = tp.pruner.MetaPruner(
        module,
        tuple(example_inputs),
        importance=importance(kind),
        global_pruning=layers.global_pruning,
        pruning_ratio=final,
        pruning_ratio_dict=dict(layers.overrides) or None,
        iterative_steps=len(ratios),
        iterative_pruning_ratio_scheduler=scheduler,
        ignored_layers=list(layers.ignored),
        num_heads=dict(layers.num_heads),
        prune_num_heads=bool(layers.num_heads),
        prune_head_dims=False,
        head_pruning_ratio=final if layers.num_heads else 0.0,
    )
    if layers.num_heads:
        heads = max(layers.num_heads.values())
        pruner.per_step_head_pruning_ratio = head_step_ratios(heads, ratios)
    return pruner


def head_step_ratios(heads: int, ratios: Sequence[float]) -> list[float]:
    """Per-step head ratios for torch-pruning, which removes ceil(ratio x *current* heads)
    at each step: turn the schedule's cumulative targets into those per-step fractions."""
    result = [0.0]
    current = heads
    for ratio in ratios:
        target = max(1, round(heads * (1 - ratio)))
        removed = current - target
        # just under removed/current, so that ceil(...) is exactly `removed`
        result.append((removed - 0.01) / current if removed > 0 else 0.0)
        current = target
    return result


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


def attention_modules(module: nn.Module) -> list[nn.Module]:
    """BERT-style self-attention blocks: query/key/value Linear layers and a head count."""
    return [
        m
        for m in module.modules()
        if all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value"))
        and isinstance(getattr(m, "num_attention_heads", None), int)
    ]


def encoder_layers(module: nn.Module, keep: set[nn.Module]) -> ChannelLayers:
    """What head pruning may touch in an encoder: whole heads of q/k/v (grouped by head)
    and the FFN's intermediate neurons. Everything that writes the residual stream (the
    attention output and FFN down projections, embeddings) keeps its width."""
    attentions = attention_modules(module)
    if not attentions:
        raise SlimserveError(
            "granularity: head needs a BERT-style encoder (attention blocks with query, key, "
            "value and num_attention_heads). For CNNs and MLPs use granularity: channel."
        )
    qkv = {getattr(a, n) for a in attentions for n in ("query", "key", "value")}
    hidden = attentions[0].query.in_features  # type: ignore[union-attr]
    ffn_up = {
        m
        for m in module.modules()
        if isinstance(m, nn.Linear) and m.in_features == hidden and m.out_features != hidden
    } - qkv
    roots = (qkv | ffn_up) & keep
    ignored = [m for m in module.modules() if isinstance(m, nn.Linear) and m not in roots]
    num_heads = {
        getattr(a, n): int(a.num_attention_heads)  # type: ignore[arg-type]
        for a in attentions
        for n in ("query", "key", "value")
    }
    return ChannelLayers(ignored=ignored, num_heads=num_heads)


def fix_attention(module: nn.Module, pruner: Any) -> None:
    """After heads are removed, tell each attention block its new head count and width."""
    for attention in attention_modules(module):
        query = attention.query
        assert isinstance(query, nn.Linear)
        # plain int attributes of the HF module (setattr: nn.Module's typing expects modules)
        setattr(attention, "num_attention_heads", int(pruner.num_heads[query]))  # noqa: B010
        setattr(attention, "all_head_size", query.out_features)  # noqa: B010
