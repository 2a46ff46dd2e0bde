"""Distillation of a pruned decoder LM: the student learns the original's next-token
distributions on training text, and the KL on that text goes down."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from slimserve.core.context import Context
from slimserve.core.errors import DataError, RecipeError
from slimserve.models.causal_lm import load_causal_lm
from slimserve.techniques.distill_llm import DistillConfig
from slimserve.techniques.prune.llm import DepthPruneConfig


def test_distillation_lowers_the_kl_on_its_training_text(tmp_path: Path) -> None:
    from slimserve.data import english_split
    from slimserve.examples.tiny_llama import build_tiny_llama

    original = load_causal_lm(build_tiny_llama(tmp_path, layers=3))
    text = "\n".join(english_split("calibration"))
    ctx = Context(reference=original, calibration_text=text, train_text=text)
    pruned = DepthPruneConfig(layers=1, calibration_samples=4).apply(original, ctx)
    config = DistillConfig(tokens=150 * 4 * 64, seq_length=64, lr=3e-3, precision="fp32")
    student = config.apply(pruned, ctx)
    kl = ctx.log.details["distill_kl"]
    assert kl["after"] < 0.75 * kl["before"], kl
    assert len(ctx.log.details["distill_loss"]) == 150
    assert any(n.startswith("Distillation: 150 steps of 4 x 64 tokens") for n in ctx.log.notes)
    # the input model and the teacher are untouched, the embedding (tied to the head)
    # frozen by default
    assert student is not pruned and pruned.module.model.config.num_hidden_layers == 2  # type: ignore[union-attr]
    assert student.module.model.config.num_hidden_layers == 2  # type: ignore[union-attr]
    embed = student.module.model.get_input_embeddings().weight  # type: ignore[union-attr]
    assert embed.equal(original.module.model.get_input_embeddings().weight)  # type: ignore[union-attr]


def test_distillation_needs_training_text_and_the_original(tmp_path: Path) -> None:
    from slimserve.examples.tiny_llama import build_tiny_llama

    model = load_causal_lm(build_tiny_llama(tmp_path))
    with pytest.raises(RecipeError, match="against the original one"):
        DistillConfig().apply(model, Context(train_text="words"))
    with pytest.raises(RecipeError, match="training prose"):
        DistillConfig().apply(model, Context(reference=model))
    with pytest.raises(
        DataError, match=r"fewer than one window of 256: give more text \(data.train"
    ):
        DistillConfig().apply(model, Context(reference=model, train_text="too short"))
