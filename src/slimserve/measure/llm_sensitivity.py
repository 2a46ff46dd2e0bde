"""Why an int4 decoder LM got worse: each decoder layer's weights alone rounded to int4
groups (every other layer float), and the KL divergence that alone costs against the float
model on the same eval windows. The report names the layers that cost most, the ones an
``int4_share`` below 1 (or ``sensitive_layers: int8``) should keep in int8."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.metrics import next_token_metrics

if TYPE_CHECKING:
    from slimserve.measure.llm import Reference
    from slimserve.models.torch import TorchModel

WINDOWS = 2  # of the eval windows: enough to rank layers, a fraction of the time


def rounded(weight: Any, group_size: int, symmetric: bool) -> Any:
    """``weight`` [out, in] rounded to 4-bit groups of ``group_size`` along its input, as
    MatMulNBits stores it (symmetric: codes -8..7 by the largest magnitude; else 0..15
    between the group's minimum and maximum)."""
    import torch

    rows, width = weight.shape
    groups = weight.reshape(rows, width // group_size, group_size)
    if symmetric:
        scale = groups.abs().amax(-1, keepdim=True) / 8
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        return (torch.clamp(torch.round(groups / scale), -8, 7) * scale).reshape(rows, width)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (high - low) / 15
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    point = torch.round(-low / scale)
    codes = torch.clamp(torch.round(groups / scale) + point, 0, 15)
    return ((codes - point) * scale).reshape(rows, width)


def layer_sensitivity(
    model: TorchModel, reference: Reference, group_size: int, symmetric: bool
) -> list[tuple[str, float]]:
    """(layer, KL when that layer alone is int4), most costly first."""
    import torch

    from slimserve.measure.llm import torch_logits

    decoder: Any = model.module.model.model  # type: ignore[union-attr]
    windows = reference.windows[:WINDOWS]
    expected = np.concatenate(reference.logits[:WINDOWS])
    targets = np.concatenate([np.asarray(w[1:]) for w in windows])
    found = []
    for number, layer in enumerate(decoder.layers):
        linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
        if any(m.in_features % group_size for m in linears):
            continue
        kept = [m.weight.data.clone() for m in linears]
        try:
            with torch.no_grad():
                for module in linears:
                    module.weight.data = rounded(module.weight.data, group_size, symmetric)
            logits = np.concatenate([torch_logits(model, w)[:-1] for w in windows])
        finally:
            for module, weight in zip(linears, kept, strict=True):
                module.weight.data = weight
        kl = next_token_metrics(expected, logits, targets)["kl_divergence"]
        found.append((f"layers.{number}", kl))
    return sorted(found, key=lambda item: -item[1])


def diagnosis(ranked: list[tuple[str, float]], shown: int = 5) -> str:
    """The report's line: the costliest layers and what to do about them."""
    top = ", ".join(f"{name} (KL {kl:.4f})" for name, kl in ranked[:shown])
    total = sum(kl for _, kl in ranked)
    share = sum(kl for _, kl in ranked[:shown]) / total if total else 0.0
    return (
        f"Why int4 got worse, layer by layer (each alone in int4, KL on {WINDOWS} eval "
        f"windows): {top}; these {min(shown, len(ranked))} of {len(ranked)} layers carry "
        f"{share:.0%} of the summed cost. Keep them in int8 with int4_share below 1 "
        "(NNCF ranks layers by a similar measure) or accept a larger KL."
    )
