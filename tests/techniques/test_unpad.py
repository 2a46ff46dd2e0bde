"""The ``unpad`` step: a padding-free encoder that exports and runs in ONNX Runtime with
the padded model's outputs, and refuses models it cannot take."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import slimserve as ss

pytest.importorskip("transformers")


def english(tiny_bert: Path, count: int) -> ss.Dataset:
    return ss.load_data({"example": "english", "split": "eval", "samples": count}, tiny_bert)


def test_unpadded_onnx_model_equals_the_padded_torch_model(tiny_bert: Path) -> None:
    model = ss.load_model(tiny_bert)
    data = english(tiny_bert, 24)
    ctx = ss.Context(data={"calibration": data})
    unpadded = ss.UnpadConfig().apply(model, ctx)
    assert any("Padding-free" in note for note in ctx.log.notes)
    onnx_model = ss.ExportConfig().apply(unpadded, ctx)
    predictor = ss.load_predictor(onnx_model)
    for rows in (slice(0, 1), slice(3, 8), slice(0, 24)):
        feeds = {n: data.inputs[n][rows] for n in model.input_names}
        with torch.no_grad():
            expected = model.module(*(torch.from_numpy(feeds[n]) for n in model.input_names))
        (got,) = predictor.predict(feeds)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_unpad_refuses_a_model_that_is_not_a_text_encoder(digits_torch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ss.ExportError, match="feature-extraction models.*Drop the 'unpad'"):
        ss.UnpadConfig().apply(digits_torch, ss.Context())


def test_a_recipe_can_try_unpadded_and_padded_chains(tiny_bert: Path) -> None:
    recipe = ss.parse_recipe(
        {
            "name": "t",
            "model": {"hf": str(tiny_bert)},
            "alternatives": [
                [{"export": {}}, {"quantize": {"mode": "dynamic"}}],
                [{"unpad": {}}, {"export": {}}, {"quantize": {"mode": "dynamic"}}],
            ],
        }
    )
    assert [s.name for s in recipe.alternatives[1]] == ["unpad", "export", "quantize"]
    with pytest.raises(ss.RecipeError, match="steps\\[1\\] 'unpad' needs a torch model"):
        ss.parse_recipe(
            {"name": "t", "model": {"hf": str(tiny_bert)}, "steps": [{"export": {}}, {"unpad": {}}]}
        )


def test_a_token_bucket_below_one_is_refused_by_its_recipe_path(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: t\nmodel: {example: minilm}\nsteps:\n  - unpad: {token_bucket: 0}\n  - export: {}\n"
    )
    with pytest.raises(ss.RecipeError, match=r"steps\[0\].*token_bucket"):
        ss.load_recipe(recipe)
