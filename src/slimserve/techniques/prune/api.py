"""TF-MOT's pruning API for PyTorch modules: migrating is a change of import.

model = ss.prune_low_magnitude(model, pruning_schedule=ss.PolynomialDecay(
    initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=1000))
for x, y in batches:
    ss.update_pruning_step(model)   # TF-MOT's UpdatePruningStep callback
    loss = criterion(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()
model = ss.strip_pruning(model)     # a plain nn.Module with the zeros baked in
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from slimserve.core.errors import SlimserveError
from slimserve.techniques.prune.masks import Granularity, MaskOptions, Pruner, Scope, attach
from slimserve.techniques.prune.schedules import Schedule

_ATTR = "_slimserve_pruner"
_HOOK = "_slimserve_pruner_hook"


def module_to_prune(model: Any) -> nn.Module:
    """The ``nn.Module`` inside what a user passes: a module, or a ``TorchModel`` from
    ``ss.load_model``; an ONNX model is refused with the order that works."""
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "module", None)
    if getattr(model, "format", None) == "torch" and isinstance(inner, nn.Module):
        return inner
    if getattr(model, "format", None) == "onnx":
        raise SlimserveError(
            "prune_low_magnitude prunes a PyTorch model, and this one is ONNX (already "
            "exported or quantized). The right order is prune -> fine-tune -> quantize: "
            "prune the PyTorch model (ss.load_model of its factory, weights or Hugging Face "
            "folder), fine-tune it, then export and quantize."
        )
    raise SlimserveError(
        "prune_low_magnitude takes a torch.nn.Module or the TorchModel ss.load_model returns, "
        f"not {type(model).__name__}."
    )


def prune_low_magnitude(
    module: nn.Module | Any,
    pruning_schedule: Schedule,
    granularity: Granularity = "unstructured",
    scope: Scope = "layer",
    exclude: Sequence[str] = (),
    sparsity_m_by_n: tuple[int, int] | None = None,
) -> nn.Module:
    """Wrap ``module``'s Linear/Conv layers with magnitude masks that follow the schedule.

    ``sparsity_m_by_n=(m, n)`` selects N:M pruning as in TF-MOT: m zeros in every n
    consecutive input weights, e.g. ``(2, 4)``.
    The final classifier stays dense; ``exclude`` takes layer-name patterns. Given the
    ``TorchModel`` that ``ss.load_model`` returns, its module is pruned and returned.
    """
    module = module_to_prune(module)
    if getattr(module, _ATTR, None) is not None:
        raise SlimserveError("This module is already wrapped by prune_low_magnitude.")
    n_m = (2, 4)  # (kept, group), what the mask code takes
    if sparsity_m_by_n is not None:
        zeros, group = sparsity_m_by_n
        if not 0 < zeros < group:
            raise SlimserveError(
                f"sparsity_m_by_n must be (m, n) with 0 < m < n (m zeros in every n "
                f"consecutive weights), got {sparsity_m_by_n}."
            )
        granularity, n_m = "n:m", (group - zeros, group)
    options = MaskOptions(exclude=tuple(exclude), n_m=n_m)
    pruner = attach(module, pruning_schedule, granularity, scope, options)
    object.__setattr__(module, _ATTR, pruner)  # a plain attribute, not a submodule

    def require_step(mod: nn.Module, args: Any) -> None:
        if mod.training and pruner.step < 0:
            raise SlimserveError(
                "Training a pruned model without update_pruning_step: call "
                "ss.update_pruning_step(model) at the start of every training step (it "
                "plays TF-MOT's UpdatePruningStep callback), or the masks never move."
            )

    object.__setattr__(module, _HOOK, module.register_forward_pre_hook(require_step))
    return module


def get_pruner(module: nn.Module) -> Pruner:
    """The Pruner behind a module wrapped by ``prune_low_magnitude``."""
    pruner = getattr(module, _ATTR, None)
    if not isinstance(pruner, Pruner):
        raise SlimserveError(
            "This module has no pruning masks: wrap it with ss.prune_low_magnitude first."
        )
    return pruner


def update_pruning_step(module: nn.Module, step: int | None = None) -> bool:
    """Advance the pruning step (once per training batch); masks move when the schedule
    says so. Returns whether they changed at this step."""
    return get_pruner(module).update(step)


def strip_pruning(module: nn.Module) -> nn.Module:
    """Bake the zeros into the weights and return a plain ``nn.Module``."""
    pruner = get_pruner(module)
    pruner.finalize()
    getattr(module, _HOOK).remove()
    object.__delattr__(module, _HOOK)
    object.__delattr__(module, _ATTR)
    return module
