"""Fine-tuning shared by the training-time techniques (gradual pruning, QAT): task loss,
distillation from the original model, or a mix; a hook per step for the technique; loss
and metric recorded around every hook that changes the model."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from slimserve.core.context import Context
from slimserve.core.errors import DataError, RecipeError
from slimserve.data import Dataset, padded_width
from slimserve.models.torch import TorchModel
from slimserve.techniques.distill import LayerTaps, distill_loss

EVAL_SAMPLES = 512


class FinetuneConfig(BaseModel):
    """Fine-tuning while pruning: task loss, distillation from the original, or a mix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(3, ge=1, description="Passes over the train split.")
    batch_size: int = Field(64, ge=1, description="Samples per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    distill: float = Field(
        0.5, ge=0, le=1, description="Weight of distillation from the original (0 = labels only)."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature for KL distillation.")
    distill_loss: Literal["auto", "kl", "mse", "cosine"] = Field(
        "auto",
        description="auto: cosine for embeddings (an output named 'embeddings', as Hugging "
        "Face feature-extraction models give), KL on other 2-D scores, cosine on the rest.",
    )
    distill_layers: tuple[str, ...] = Field(
        (),
        description="Module-name patterns (fnmatch; outermost match wins) whose outputs "
        "the model also learns to match, e.g. '*encoder.layer.*' for the layers of a "
        "Hugging Face encoder. Layer-wise distillation gives many targets per sample; the "
        "outputs must keep their shape (true for head pruning, not for channel pruning).",
    )
    group_by_length: bool = Field(
        False,
        description="Text (inputs with an attention_mask): put sentences of similar length "
        "in the same batch (sorted within windows of 16 batches, batch order shuffled), so "
        "less of each batch is padding. Every batch is trimmed to its longest sentence "
        "either way.",
    )


@dataclass
class History:
    """Loss and metric around each schedule update, for the diagnosis and the plot."""

    points: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


@dataclass
class Ramp:
    """How sparsity moves while the model fine-tunes: what the training loop calls."""

    is_update: Callable[[int], bool]
    apply: Callable[[int], object]
    sparsity: Callable[[], float]
    reshapes: bool = False  # channel removal replaces parameters: rebuild the optimizer


def run_finetune(
    model: TorchModel, finetune: FinetuneConfig, ctx: Context, ramp: Ramp, metric_fn: Any
) -> History:
    """Train with the task and/or distillation loss while ``ramp`` raises sparsity;
    record loss and metric around every update."""
    history = History()
    teacher = teacher_module(ctx)
    module = model.module
    weight = finetune.distill if train_split(ctx, model).labels is not None else 1.0
    if teacher is None and weight > 0:
        raise DataError("Distillation needs the original model as a reference.")
    if finetune.distill_layers and weight == 0:
        raise RecipeError(
            "finetune.distill_layers matches layers to the original, but distill is 0 "
            "(labels only). Set distill above 0 or drop distill_layers."
        )
    if finetune.group_by_length and "attention_mask" not in model.input_names:
        raise RecipeError(
            "finetune.group_by_length batches sentences by length, but this model takes no "
            f"attention_mask (its inputs: {list(model.input_names)}), so its samples have no "
            "length. Drop group_by_length: it is for text models."
        )
    torch.manual_seed(ctx.seed)
    torch.set_num_threads(ctx.threads)
    finetune = _resolve_distill_loss(finetune, model)
    taps = LayerTaps(module, teacher, finetune.distill_layers) if finetune.distill_layers else None
    try:
        _train(model, finetune, ctx, ramp, metric_fn, history, teacher, weight, taps)
    finally:  # the hooks sit on the original too, which the pipeline goes on to measure
        if taps is not None:
            taps.close()
    module.eval()
    return history


def _train(
    model: TorchModel,
    finetune: FinetuneConfig,
    ctx: Context,
    ramp: Ramp,
    metric_fn: Any,
    history: History,
    teacher: nn.Module | None,
    weight: float,
    taps: LayerTaps | None,
) -> None:
    train = train_split(ctx, model)
    steps = total_steps(train, finetune)
    module = model.module
    inputs = [torch.from_numpy(np.ascontiguousarray(train.inputs[n])) for n in model.input_names]
    labels = None if train.labels is None else torch.from_numpy(train.labels).long()
    mask = _attention_mask(model.input_names, inputs)
    lengths = None if mask is None else (mask != 0).sum(dim=1)
    generator = torch.Generator().manual_seed(ctx.seed)
    optimizer = make_optimizer(module, finetune)
    step = 0
    module.train()
    for _ in range(finetune.epochs):
        batches = epoch_batches(
            len(train),
            finetune.batch_size,
            generator,
            lengths if finetune.group_by_length else None,
        )
        for idx in batches:
            if ramp.is_update(step):
                metric_before = metric_fn(module)
                ramp.apply(step)
                if ramp.reshapes:
                    optimizer = make_optimizer(module, finetune)
                _checkpoint(module, metric_fn, history, step, ramp.sparsity(), metric_before)
            batch = trim_padding(model.input_names, [t[idx] for t in inputs])
            batch_labels = labels[idx] if labels is not None else None
            loss = _loss(module(*batch), batch, batch_labels, teacher, weight, finetune)
            if taps is not None:
                loss = loss + weight * taps.loss()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            history.losses.append(float(loss.detach()))
            step += 1
            if step % 10 == 0 or step == steps:
                metric = history.points[-1]["metric_after_update"] if history.points else None
                ctx.progress(
                    f"prune: step {step}/{steps} sparsity {ramp.sparsity():.2f} "
                    f"loss {history.losses[-1]:.3f}"
                    + (f" {ctx.goal_metric} {metric:.3f}" if metric is not None else ""),
                    step / steps,
                )
    for point in history.points:
        start = int(point["step"])
        window = history.losses[start : start + 20]
        point["loss_after"] = float(np.mean(window)) if window else float("nan")


def _loss(
    out: Any,
    batch: list[torch.Tensor],
    labels: torch.Tensor | None,
    teacher: nn.Module | None,
    weight: float,
    finetune: FinetuneConfig,
) -> torch.Tensor:
    student = out if isinstance(out, torch.Tensor) else out[0]
    loss = torch.zeros((), dtype=student.dtype)
    if labels is not None and weight < 1:
        loss = loss + (1 - weight) * nn.functional.cross_entropy(student, labels)
    if weight > 0 and teacher is not None:
        with torch.no_grad():
            target = teacher(*batch)
            target = target if isinstance(target, torch.Tensor) else target[0]
        loss = loss + weight * distill_loss(
            student, target, finetune.distill_loss, finetune.temperature
        )
    return loss


def _resolve_distill_loss(finetune: FinetuneConfig, model: TorchModel) -> FinetuneConfig:
    """``auto`` made concrete: cosine for embeddings, whose coordinates are not class
    scores (a softmax over them would train the wrong thing); else decided per output."""
    if finetune.distill_loss == "auto" and outputs_embeddings(model):
        return finetune.model_copy(update={"distill_loss": "cosine"})
    return finetune


LENGTH_WINDOW = 16
"""group_by_length sorts sentences by length within windows of this many batches: batches
hold similar lengths, yet which sentences meet stays random."""


def epoch_batches(
    count: int, batch_size: int, generator: torch.Generator, lengths: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """One epoch's batches of sample indices: a random permutation cut into batches, or,
    with ``lengths``, each window of ``LENGTH_WINDOW`` batches of the permutation sorted
    by length before it is cut, and the batches then shuffled (as Hugging Face's
    ``group_by_length``)."""
    order = torch.randperm(count, generator=generator)
    if lengths is None:
        return _cut(order, batch_size)
    batches: list[torch.Tensor] = []
    for window in _cut(order, batch_size * LENGTH_WINDOW):
        ranked = window[torch.argsort(lengths[window], descending=True, stable=True)]
        batches.extend(_cut(ranked, batch_size))
    shuffled = torch.randperm(len(batches), generator=generator)
    return [batches[int(i)] for i in shuffled]


def _cut(indices: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def _attention_mask(names: tuple[str, ...], inputs: list[torch.Tensor]) -> torch.Tensor | None:
    """The text padding mask among the model's inputs (Hugging Face's name), if any."""
    for name, tensor in zip(names, inputs, strict=True):
        if name == "attention_mask" and tensor.dim() == 2:
            return tensor
    return None


def trim_padding(names: tuple[str, ...], batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """Drop the trailing positions that every sentence of the batch pads: the split is
    padded to its longest sentence, most batches' longest is far shorter, and padded
    positions are masked, so the outputs are the same at a fraction of the work. Only
    trailing ones: real tokens keep their positions (left padding is left alone)."""
    mask = _attention_mask(names, batch)
    if mask is None:
        return batch
    width = padded_width(mask.numpy())
    if width == mask.shape[1]:
        return batch
    return [t[:, :width] if t.shape == mask.shape else t for t in batch]


def _checkpoint(
    module: nn.Module,
    metric_fn: Any,
    history: History,
    step: int,
    sparsity: float,
    metric_before: float | None,
) -> None:
    """Right after a schedule update: the metric before training recovers, and the loss of
    the steps before it (the spike shows against that)."""
    recent = history.losses[-20:]
    history.points.append(
        {
            "step": float(step),
            "sparsity": float(sparsity),
            "loss_before": float(np.mean(recent)) if recent else float("nan"),
            "metric_before": float("nan") if metric_before is None else metric_before,
            "metric_after_update": metric_fn(module),
        }
    )
    module.train()


def eval_subset(ctx: Context, model: TorchModel) -> Dataset | None:
    data = ctx.split("eval", "calibration")
    return None if data is None else data.renamed(model.input_names).take(EVAL_SAMPLES)


def outputs_embeddings(model: TorchModel) -> bool:
    """Whether the model's output is an embedding (a Hugging Face feature-extraction
    model, or any output named ``embedding(s)``), where the largest coordinate means
    nothing and only the direction counts."""
    from slimserve.core.metrics import is_embedding_output

    return is_embedding_output(model.output_names)


def metric_key(model: TorchModel, ctx: Context, result: dict[str, float]) -> str | None:
    """The number training watches: the recipe's goal metric when the evaluation gives
    it; else accuracy with labels; else fidelity to the original (cosine for embeddings,
    top-1 agreement for class scores)."""
    fallback = (
        ("accuracy", "cosine_mean")
        if outputs_embeddings(model)
        else ("accuracy", "top1_agreement", "cosine_mean")
    )
    for key in (ctx.goal_metric, *fallback):
        if key in result:
            return str(key)
    return None


def make_metric(model: TorchModel, ctx: Context, data: Dataset | None) -> Any:
    """The step's metric on the eval subset (see ``metric_key``)."""
    from slimserve.core.metrics import score
    from slimserve.runtime import TorchPredictor, predict_all

    if data is None:
        return lambda module: float("nan")
    reference = None
    if data.labels is None and ctx.reference is not None:
        reference = predict_all(TorchPredictor(ctx.reference, ctx.threads), data)  # type: ignore[arg-type]

    def metric(module: nn.Module) -> float:
        was_training = module.training
        module.eval()
        predictor = TorchPredictor(model.with_module(module), ctx.threads)
        outputs = predict_all(predictor, data)
        result = score(outputs, data.labels, reference, output_names=predictor.output_names)
        module.train(was_training)
        key = metric_key(model, ctx, result)
        return float("nan") if key is None else result[key]

    return metric


def train_split(ctx: Context, model: TorchModel) -> Dataset:
    data = ctx.split("train")
    if data is None:
        raise DataError(
            "Fine-tuning while pruning needs data.train in the recipe (labels optional: "
            "without them the model learns from the original by distillation)."
        )
    return data.renamed(model.input_names)


def teacher_module(ctx: Context) -> nn.Module | None:
    if isinstance(ctx.reference, TorchModel):
        return ctx.reference.module.eval()
    return None


def make_optimizer(module: nn.Module, finetune: FinetuneConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(module.parameters(), lr=finetune.lr, weight_decay=finetune.weight_decay)


def total_steps(train: Dataset, finetune: FinetuneConfig) -> int:
    return finetune.epochs * math.ceil(len(train) / finetune.batch_size)
