"""What the ``prune`` recipe step does (its config is ``prune/config.py``): masks (or
channel removal) that follow a TF-MOT schedule while the model fine-tunes, with
distillation from the original, and a diagnosis when the ramp was too steep.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimserve.core.context import Context
from slimserve.core.errors import DataError, RecipeError
from slimserve.data import TEXT_BATCH, length_order
from slimserve.models.torch import TorchModel
from slimserve.techniques.finetune import (
    History,
    Ramp,
    eval_subset,
    make_metric,
    run_finetune,
    teacher_module,
    total_steps,
    train_split,
    trim_padding,
)
from slimserve.techniques.prune.masks import (
    PRUNABLE,
    MaskOptions,
    Pruner,
    attach,
    prunable_layers,
    resolve_overrides,
)
from slimserve.techniques.prune.schedules import Schedule
from slimserve.techniques.prune.structured import (
    ChannelLayers,
    channel_pruner,
    count_parameters,
    encoder_layers,
    fix_attention,
)

if TYPE_CHECKING:
    from slimserve.techniques.prune.config import PruneConfig


def prune_model(model: TorchModel, config: PruneConfig, ctx: Context) -> TorchModel:
    """Run the prune step on ``model`` (modified in place; the pipeline passes a copy)."""
    module = model.module
    schedule = config.resolved_schedule()
    eval_data = eval_subset(ctx, model)
    metric_fn = make_metric(model, ctx, eval_data)
    before_metric = metric_fn(module)
    params_before = count_parameters(module)
    if config.granularity in ("channel", "head"):
        history = _run_channels(model, config, schedule, ctx, metric_fn)
        pruner = None
    else:
        assert config.granularity in ("unstructured", "n:m")
        pruner = attach(
            module,
            schedule,
            config.granularity,
            config.scope,
            MaskOptions(
                exclude=tuple(config.exclude),
                prune_classifier=config.prune_classifier,
                n_m=config.pattern,
                overrides=config.overrides,
            ),
        )
        history = _run_masks(model, config, pruner, ctx, metric_fn)
        pruner.finalize()
    module.eval()
    after_metric = metric_fn(module)
    _record(ctx, config, pruner, history, module, params_before, before_metric, after_metric)
    return model.with_module(module)


def _run_masks(
    model: TorchModel, config: PruneConfig, pruner: Pruner, ctx: Context, metric_fn: Any
) -> History:
    for name, reason in pruner.skipped.items():
        ctx.log.notes.append(f"Layer {name} left dense for n:m: {reason}.")
    schedule = pruner.schedule
    assert schedule is not None
    if config.finetune is None:
        # One shot: the schedule's final sparsity, now; no training to recover.
        pruner.step = max(0, schedule.begin_step)
        pruner.apply(schedule.final_sparsity)
        return History()
    _check_schedule_fits(schedule, total_steps(train_split(ctx, model), config.finetune))
    ramp = Ramp(lambda s: schedule(s)[0], pruner.update, pruner.sparsity)
    return run_finetune(model, config.finetune, ctx, ramp, metric_fn)


def _run_channels(
    model: TorchModel, config: PruneConfig, schedule: Schedule, ctx: Context, metric_fn: Any
) -> History:
    module = model.module
    if model.example_inputs is None:
        raise DataError("Channel pruning needs example inputs (give data or a factory).")
    prunable = prunable_layers(module, config.exclude, config.prune_classifier)
    keep = set(prunable.values())
    ignored = [m for m in module.modules() if isinstance(m, PRUNABLE) and m not in keep]
    if config.overrides and config.scope == "global":
        raise RecipeError("prune.overrides needs scope: layer (global ranks all layers at once).")
    overrides = {
        prunable[name]: value
        for name, value in resolve_overrides(prunable, config.overrides).items()
    }
    finetune = config.finetune
    if finetune is None:
        plan = {0: schedule.final_sparsity}
    else:
        steps = total_steps(train_split(ctx, model), finetune)
        _check_schedule_fits(schedule, steps)
        plan = {s: schedule(s)[1] for s in range(steps) if schedule(s)[0]}
    layers = ChannelLayers(ignored, overrides, config.scope == "global")
    if config.granularity == "head":
        if config.scope == "global":
            raise RecipeError("granularity: head prunes per layer; use scope: layer.")
        encoder = encoder_layers(module, keep)
        layers = replace(encoder, overrides=overrides)
    pruner = channel_pruner(
        module, model.example_inputs, list(plan.values()), config.importance, layers
    )
    reached = [0.0]

    def prune_now(step: int) -> None:
        if config.importance == "taylor":
            _taylor_gradients(model, ctx)
        pruner.step()
        if config.granularity == "head":
            fix_attention(module, pruner)
        reached[0] = plan[step]

    if finetune is None:
        prune_now(0)
        return History()
    ramp = Ramp(plan.__contains__, prune_now, lambda: reached[0], reshapes=True)
    return run_finetune(model, finetune, ctx, ramp, metric_fn)


def _check_schedule_fits(schedule: Schedule, steps: int) -> None:
    end = schedule.end_step
    if end >= steps:
        raise RecipeError(
            f"The pruning schedule ends at step {end} but fine-tuning runs only {steps} steps "
            f"(epochs x batches), so it would never reach its final sparsity. Set end_step "
            f"below {steps} (e.g. {int(steps * 0.7)}) or add epochs."
        )


def _taylor_gradients(model: TorchModel, ctx: Context) -> None:
    """Taylor importance needs gradients of the task (or distillation) loss: summed over
    up to 256 samples; text in length-ordered batches, each cut to its longest sentence
    (as in training) and weighted by its share, so the gradients are the full mean's."""
    module = model.module
    data = ctx.split("train", "calibration", "eval")
    if data is None:
        raise DataError("Taylor importance needs data to compute gradients.")
    sample = data.renamed(model.input_names).take(256)
    inputs = [torch.from_numpy(sample.inputs[n]) for n in model.input_names]
    labels = None if sample.labels is None else torch.from_numpy(sample.labels).long()
    teacher = teacher_module(ctx) if labels is None else None
    assert labels is not None or teacher is not None
    text_order = length_order(sample.inputs)
    if text_order is None:  # one batch: BatchNorm sees every sample
        order, size = torch.arange(len(sample)), len(sample)
    else:
        order, size = torch.from_numpy(text_order), TEXT_BATCH
    module.zero_grad()
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        batch = trim_padding(model.input_names, [t[rows] for t in inputs])
        out = module(*batch)
        out = out if isinstance(out, torch.Tensor) else out[0]
        if labels is not None:
            loss = nn.functional.cross_entropy(out, labels[rows])
        else:
            assert teacher is not None
            with torch.no_grad():
                target = teacher(*batch)
            loss = nn.functional.mse_loss(
                out, target if isinstance(target, torch.Tensor) else target[0]
            )
        (loss * len(rows) / len(order)).backward()  # type: ignore[no-untyped-call]


def _record(
    ctx: Context,
    config: PruneConfig,
    pruner: Pruner | None,
    history: History,
    module: nn.Module,
    params_before: int,
    before_metric: float,
    after_metric: float,
) -> None:
    from slimserve.techniques.prune.diagnose import diagnose

    params_after = count_parameters(module)
    details: dict[str, Any] = {
        "params_before": params_before,
        "params_after": params_after,
        "metric_before": before_metric,
        "metric_after": after_metric,
        "history": history.points,
        "losses": history.losses[:: max(1, len(history.losses) // 400)],
        "loss_stride": max(1, len(history.losses) // 400),
    }
    if pruner is not None:
        details["layer_sparsity"] = pruner.layer_sparsity()
        details["sparsity"] = pruner.sparsity()
        details["updates"] = [
            {"step": u.step, "sparsity": u.sparsity, "magnitude_lost": u.magnitude_lost}
            for u in pruner.updates
        ]
    ctx.log.details.update(details)
    train = ctx.split("train")
    samples = len(train) if train is not None else None
    ctx.log.notes.extend(diagnose(config, details, ctx.goal_metric, ctx.max_drop, samples))
