"""Prune -> distill -> quantize for a decoder LM through the recipe: the pruned model is
measured against the unpruned float model, built for onnxruntime-genai with its smaller
shapes, and generates what transformers generates with it; the order is enforced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")

import slimserve as ss
from slimserve.core.errors import DataError, RecipeError
from slimserve.runtime.generation import GenerationParams

PRUNE = {"prune": {"granularity": "depth", "layers": 1, "calibration_samples": 4}}
DISTILL = {"distill": {"tokens": 20 * 4 * 64, "seq_length": 64, "lr": 3e-3}}


def recipe_for(
    folder: Path, prose: Path, steps: list[list[dict[str, object]]], **data: object
) -> ss.Recipe:
    return ss.parse_recipe(
        {
            "name": "tiny-pruned",
            "model": {"hf": str(folder)},
            "data": {"eval": {"text": str(prose), "max_length": 64, "samples": 3}, **data},
            "alternatives": steps,
            "goal": {"metric": "kl_divergence", "max_drop": 10.0},
            "bench": {"repeats": 3},
        }
    )


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, prose: Path) -> ss.RunResult:
    from slimserve.examples.tiny_llama import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("llama3"), layers=3)
    steps = [
        [PRUNE, DISTILL, {"quantize": {"mode": "llm", "weights": "fp32"}}],
        [{"quantize": {"mode": "llm", "weights": "fp32"}}],
    ]
    return ss.run_recipe(recipe_for(folder, prose, steps), tmp_path_factory.mktemp("out"))


def test_each_step_is_measured_against_the_unpruned_float_model(pruned: ss.RunResult) -> None:
    names = [s.name for s in pruned.stages]
    assert names[0].startswith("baseline") and "prune depth 1 blocks" in names[1]
    assert "distill" in names[2] and "build llm fp32" in names[3]
    _, cut, distilled, built, unpruned = pruned.stages
    assert cut.metrics["kl_divergence"] > 0 and unpruned.metrics["kl_divergence"] < 1e-6
    assert built.metrics["kl_divergence"] == pytest.approx(
        distilled.metrics["kl_divergence"], abs=1e-3
    )
    assert built.size_bytes < unpruned.size_bytes  # one block of three fewer
    notes = pruned.artifact.manifest.notes
    assert any(n.startswith("Depth pruning removed 1 of 3 decoder blocks") for n in notes)
    assert any(n.startswith("Distillation: 20 steps") for n in notes)
    assert any(
        "Distillation's training text: Python's documentation (train split)" in n for n in notes
    )
    assert any("Calibration (pruning importance" in n for n in notes)


def test_the_pruned_build_generates_what_transformers_generates(pruned: ss.RunResult) -> None:
    distilled, built = pruned.stages[2].model, pruned.stages[3].model
    hf = distilled.module.model  # type: ignore[union-attr]
    generator = ss.Generator(built)  # type: ignore[arg-type]
    prompt = generator.encode("the cat sat on")
    tokens = generator.generate([prompt], GenerationParams(max_new_tokens=10))[0]
    with torch.inference_mode():
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
    assert tokens == [t for t in expected[0, len(prompt) :].tolist() if t != 2][: len(tokens)]
    assert built.config()["model"]["decoder"]["num_hidden_layers"] == 2  # type: ignore[attr-defined]


def test_quantize_before_prune_is_refused_with_the_reason(tiny_llama: Path, prose: Path) -> None:
    steps = [[{"quantize": {"mode": "llm", "weights": "int8"}}, PRUNE]]
    with pytest.raises(RecipeError, match=r"prune -> fine-tune -> quantize"):
        recipe_for(tiny_llama, prose, steps)
    with pytest.raises(RecipeError, match="granularity depth or width"):
        recipe_for(tiny_llama, prose, [[{"prune": {"sparsity": 0.5}}]])


def test_training_on_the_eval_text_is_refused(
    tiny_llama: Path, prose: Path, tmp_path: Path
) -> None:
    recipe = recipe_for(
        tiny_llama,
        prose,
        [[PRUNE, DISTILL]],
        train={"text": str(prose), "max_length": 64, "samples": 3},
    )
    with pytest.raises(DataError, match="data.train and data.eval name the same text"):
        ss.run_recipe(recipe, tmp_path)
