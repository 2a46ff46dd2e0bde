"""OpenVINO as a runtime: the artifact's ONNX model compiled by OpenVINO, timed against
ONNX Runtime in the same run, served over V2, and a missing extra named."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import slimserve as ss
from slimserve.artifact import MODEL_FILE
from slimserve.core.errors import MissingExtraError
from slimserve.runtime import OrtPredictor
from slimserve.runtime.openvino import OvPredictor, precision_name
from tests.techniques import test_torch_program as torch_program_tests

pytest.importorskip("openvino")


def digits_recipe(runtimes: dict[str, Any], steps: list[Any] | None = None) -> ss.Recipe:
    return torch_program_tests.digits_recipe(runtimes, steps, name="digits-ov")


def test_openvino_f32_gives_onnx_runtime_s_outputs(
    digits_onnx: ss.OnnxModel, digits_test: ss.Dataset
) -> None:
    x = digits_test.inputs["input"][:64]
    predictor = OvPredictor(digits_onnx, threads=2, precision="f32")
    assert predictor.inference_precision == "f32"
    assert predictor.input_names == ("input",) and predictor.output_names == ("output",)
    expected = OrtPredictor(digits_onnx).predict({"input": x})[0]
    first = predictor.predict({"input": x})[0]
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-4)
    predictor.predict({"input": x[:1]})  # another shape: results are the caller's own
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-4)


def test_openvino_is_timed_with_the_rest_and_recorded(tmp_path: Path) -> None:
    result = ss.run_recipe(digits_recipe({"candidates": ["onnx", "openvino"]}), tmp_path)
    manifest = result.artifact.manifest
    rows = {row["stage"]: row for row in manifest.stages}
    ov_rows = [name for name in rows if name.startswith("openvino ")]
    assert len(ov_rows) == 1 and rows[ov_rows[0]]["timings"]["32"]["items_per_s"] > 0
    note = next(n for n in manifest.notes if n.startswith("Serving the"))
    assert "same run" in note
    speed = {
        n: rows[n]["timings"]["32"]["items_per_s"] for n in (ov_rows[0], "quantize static int8")
    }
    ok = rows[ov_rows[0]]["metrics"]["accuracy"] >= manifest.baseline["accuracy"] - 0.02
    faster = max(speed, key=speed.__getitem__)
    assert manifest.runtime == ("openvino" if ok and faster == ov_rows[0] else "onnx")
    assert list(manifest.files).count(MODEL_FILE) == 1  # OpenVINO reads the same hashed file


def test_an_openvino_artifact_round_trips_and_serves_over_v2(tmp_path: Path) -> None:
    from tests.serve.conftest import infer_once

    recipe = digits_recipe({"candidates": ["openvino"], "openvino_precision": "f32"})
    result = ss.run_recipe(recipe, tmp_path)
    manifest = ss.load_artifact(result.artifact.path).manifest  # hashes verified
    assert manifest.runtime == "openvino" and manifest.runtime_precision == "f32"
    assert manifest.precision == "int8"
    predictor = ss.load_predictor(result.artifact.path)
    assert isinstance(predictor, OvPredictor) and predictor.inference_precision == "f32"
    x, _ = __import__("slimserve.examples.digits", fromlist=["load_split"]).load_split("test")
    local = predictor.predict({"input": x[:32]})[0]
    served = infer_once(result.artifact.path, "digits-ov", x[:32])  # tritonclient over HTTP
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-5)


def test_the_manifest_names_the_precision_that_runs() -> None:
    assert precision_name("bf16", "float32") == "bfloat16"
    assert precision_name("f32", "float32") == "float32"
    assert precision_name("bf16", "int8") == "int8"


def test_a_missing_openvino_extra_is_named(
    digits_onnx: ss.OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"slimserve\[openvino\]"):
        OvPredictor(digits_onnx)


def test_an_unknown_runtime_is_refused_by_name() -> None:
    with pytest.raises(ss.RecipeError, match="openvino"):
        digits_recipe({"candidates": ["tensorrt"]})
