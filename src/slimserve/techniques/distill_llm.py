"""Logit distillation of a pruned decoder LM (the ``distill`` step): the student learns the
unpruned teacher's next-token distributions (KL divergence, with a temperature) on
training prose from another source than the eval text, in bfloat16 autocast on the CPU,
AdamW with warm-up and cosine decay. What it trains is a knob: every decoder block with
the (tied) embedding frozen, which is where pruning changed the model and saves the
largest matrix's gradient, or everything.

Written here rather than taken from a library: transformers' Trainer and TRL's GKD
trainer assume a GPU-sized run (and TRL pulls its own stack); the loop is forty lines of
torch, and the report needs its curve and the before/after KL.
"""

from __future__ import annotations

import copy
import math
import random
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from slimserve.core.errors import RecipeError

if TYPE_CHECKING:
    from slimserve.core.context import Context
    from slimserve.models.torch import TorchModel

PROBE_WINDOWS = 8
"""Training windows the KL is measured on before and after (the recovery figure)."""


class DistillConfig(BaseModel):
    """Train a (pruned) decoder LM on the original model's next-token distributions."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "distill"
    accepts: ClassVar[tuple[str, ...]] = ("causal_lm",)
    produces: ClassVar[str] = "causal_lm"
    trains: ClassVar[bool] = True
    uses_train_text: ClassVar[bool] = True

    tokens: int = Field(
        200_000,
        ge=1,
        description="Training tokens the student sees (SmolLM2-135M trained at 250-330 a "
        "second on a 2-core Xeon in bfloat16, measured: budget ~4 minutes per 60,000).",
    )
    seq_length: int = Field(256, ge=8, description="Tokens per training window.")
    batch_size: int = Field(4, ge=1, description="Windows per step.")
    lr: float = Field(1e-4, gt=0, description="AdamW's peak learning rate.")
    warmup: float = Field(
        0.05, ge=0, lt=1, description="Share of the steps the learning rate ramps up over."
    )
    temperature: float = Field(
        1.0, gt=0, description="Softens both distributions (the loss is scaled by T^2)."
    )
    train: Literal["blocks", "all"] = Field(
        "blocks",
        description="blocks: every decoder block and norm, the embedding (tied to the head "
        "in SmolLM2) frozen; all: every weight.",
    )
    precision: Literal["bf16", "fp32"] = Field(
        "bf16", description="Autocast dtype of the forward passes (bf16 ~3x faster on CPU)."
    )

    def describe(self) -> str:
        return f"distill {self.tokens / 1000:g}k tokens"

    def apply(self, model: TorchModel, ctx: Context) -> TorchModel:
        return distill_lm(model, self, ctx)


def distill_lm(model: TorchModel, config: DistillConfig, ctx: Context) -> TorchModel:
    """``model`` trained to match ``ctx.reference``'s next-token distributions on
    ``ctx.train_text``; the loss curve and the KL before/after go to the step's log."""
    from slimserve.models.causal_lm import NextTokenLogits, text_windows
    from slimserve.models.hf import load_tokenizer

    student = copy.deepcopy(getattr(model.module, "model", None))  # the input stays intact
    teacher = getattr(getattr(ctx.reference, "module", None), "model", None)
    if student is None or teacher is None or model.hf_folder is None:
        raise RecipeError(
            "distill trains a decoder LM against the original one: it follows a prune step "
            "of a recipe whose model is a decoder LM ({hf: DIR} or {gguf: FILE})."
        )
    if not ctx.train_text:
        raise RecipeError(
            "distill needs training prose: give data.train ({example: english, split: "
            "train} by default), from another source than data.eval."
        )
    tokens = list(load_tokenizer(model.hf_folder)(ctx.train_text)["input_ids"])
    windows = text_windows(tokens, config.seq_length, None, "data.train")
    if len(windows) < 2:
        raise RecipeError(
            f"The training text holds {len(tokens)} tokens, fewer than two windows of "
            f"{config.seq_length}: give more text (data.train) or a smaller seq_length."
        )
    if config.precision == "bf16":  # the teacher only runs forward: its weights cast once
        teacher = copy.deepcopy(teacher).to(torch.bfloat16)
    probe = torch.tensor(windows[:PROBE_WINDOWS])
    before = _kl(student, teacher, probe, config)
    started = time.perf_counter()
    losses = _train(student, teacher, windows, config, ctx)
    seconds = time.perf_counter() - started
    after = _kl(student, teacher, probe, config)
    seen = len(losses) * config.batch_size * config.seq_length
    ctx.log.details["distill_loss"] = [round(v, 4) for v in losses]
    ctx.log.details["distill_kl"] = {"before": round(before, 5), "after": round(after, 5)}
    ctx.log.notes.append(
        f"Distillation: {len(losses)} steps of {config.batch_size} x {config.seq_length} tokens "
        f"({seen:,} tokens, {len(windows)} windows of the training text) in {seconds / 60:.1f} "
        f"min ({seen / seconds:,.0f} tokens/s, {config.precision}, training {config.train}); "
        f"KL to the original on {len(probe)} training windows {before:.4f} -> {after:.4f}."
    )
    if after > 0.5 * before:
        ctx.log.notes.append(
            f"Distillation recovered {1 - after / before:.0%} of the KL the cut cost: the cut "
            "was steep for this budget. Remove fewer blocks or channels per prune step and "
            "alternate prune and distill steps (gradual pruning), or give distill more tokens."
        )
    return model.with_module(NextTokenLogits(student.eval()).eval())


def _autocast(config: DistillConfig) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.precision == "bf16")


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    logits: torch.Tensor = out.logits.float()
    return logits


def _loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    vocab = student.shape[-1]
    return torch.nn.functional.kl_div(
        torch.log_softmax(student.reshape(-1, vocab) / temperature, -1),
        torch.log_softmax(teacher.reshape(-1, vocab) / temperature, -1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)


def _kl(student: Any, teacher: Any, ids: torch.Tensor, config: DistillConfig) -> float:
    """The mean next-token KL (temperature 1) of the student to the teacher on ``ids``."""
    student.eval()
    total = 0.0
    with torch.no_grad(), _autocast(config):
        for row in torch.split(ids, config.batch_size):
            total += float(_loss(_logits(student, row), _logits(teacher, row), 1.0)) * len(row)
    return total / len(ids)


def _train(
    student: Any, teacher: Any, windows: list[list[int]], config: DistillConfig, ctx: Context
) -> list[float]:
    steps = math.ceil(config.tokens / (config.batch_size * config.seq_length))
    embedding = student.get_input_embeddings().weight
    trained = [p for p in student.parameters() if config.train == "all" or p is not embedding]
    for parameter in student.parameters():
        parameter.requires_grad_(any(parameter is p for p in trained))
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.0)
    warm = max(1, int(steps * config.warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        ),
    )
    order = random.Random(ctx.seed)
    queue: list[list[int]] = []
    losses: list[float] = []
    teacher.eval()
    student.train()
    try:
        for step in range(steps):
            batch: list[list[int]] = []
            while len(batch) < config.batch_size:
                if not queue:
                    queue = windows[:]
                    order.shuffle(queue)
                batch.append(queue.pop())
            ids = torch.tensor(batch)
            with _autocast(config):
                with torch.no_grad():
                    target = _logits(teacher, ids)
                loss = _loss(_logits(student, ids), target, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            ctx.progress(
                f"distill step {step + 1}/{steps}, KL {losses[-1]:.4f}", (step + 1) / steps
            )
    finally:
        for parameter in student.parameters():
            parameter.requires_grad_(True)
        student.eval()
    return losses
