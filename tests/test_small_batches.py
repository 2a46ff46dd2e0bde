"""A second executable for small batches: routed by rows x tokens, chosen by a crossover
measured in the run, hashed like every runtime file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import slimserve as ss
from slimserve.artifact import MODEL_FILE
from slimserve.cli import app
from slimserve.core.errors import ArtifactError
from slimserve.runtime import OrtPredictor
from slimserve.runtime.routed import RoutedPredictor, batch_tokens
from tests.conftest import manifest_for
from tests.techniques import test_torch_program as torch_program_tests


def test_a_batch_goes_to_the_small_build_up_to_its_limit(
    digits_onnx: ss.OnnxModel, digits_test: ss.Dataset
) -> None:
    x = digits_test.inputs["input"]
    small, large = OrtPredictor(digits_onnx), OrtPredictor(digits_onnx)
    routed = RoutedPredictor(small, large, max_tokens=8)
    expected = small.predict({"input": x[:40]})[0]
    np.testing.assert_allclose(routed.predict({"input": x[:8]})[0], expected[:8], atol=1e-6)
    np.testing.assert_allclose(routed.predict({"input": x[:40]})[0], expected, atol=1e-6)
    assert routed.calls == {"small": 1, "large": 1}
    ids = np.ones((4, 12), np.int64)  # text: rows x tokens of the padded batch
    assert batch_tokens({"input_ids": ids, "attention_mask": ids}) == 48


def small_artifact(folder: Path, model: ss.OnnxModel, listed: bool = True) -> Path:
    record = {"file": "small/model.onnx", "runtime": "onnx", "stage": "x", "max_tokens": 4}
    manifest = manifest_for(model).model_copy(update={"small_batches": record})
    files = {"small/model.onnx": model.to_bytes()} if listed else {}
    ss.save_artifact(folder, model, manifest, files)
    if not listed:
        (folder / "small").mkdir()
        (folder / "small" / "model.onnx").write_bytes(model.to_bytes())
    return folder


def test_an_artifact_with_a_small_build_routes_and_refuses_a_changed_file(
    tmp_path: Path, digits_onnx: ss.OnnxModel, digits_test: ss.Dataset
) -> None:
    folder = small_artifact(tmp_path / "a", digits_onnx)
    predictor = ss.load_predictor(folder)
    assert isinstance(predictor, RoutedPredictor) and predictor.max_tokens == 4
    shown = CliRunner().invoke(app, ["inspect", str(folder)], env={"COLUMNS": "200"})
    assert "Small batches (at most 4 rows x tokens) run on small/model.onnx" in shown.output
    x = digits_test.inputs["input"][:16]
    predictor.predict({"input": x[:2]})
    predictor.predict({"input": x})
    assert predictor.calls == {"small": 1, "large": 1}
    small = folder / "small" / "model.onnx"
    data = bytearray(small.read_bytes())
    data[len(data) // 2] ^= 0xFF
    small.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="modified after the artifact was saved"):
        ss.load_predictor(folder)


def test_a_small_build_record_without_a_known_runtime_is_refused(
    tmp_path: Path, digits_onnx: ss.OnnxModel
) -> None:
    record = {"file": "small/model.onnx", "runtime": "tflite", "stage": "x", "max_tokens": 4}
    manifest = manifest_for(digits_onnx).model_copy(update={"small_batches": record})
    folder = tmp_path / "c"
    ss.save_artifact(folder, digits_onnx, manifest, {"small/model.onnx": digits_onnx.to_bytes()})
    with pytest.raises(ArtifactError, match="small_batches needs a 'file' and a 'runtime'"):
        ss.load_predictor(folder)


def test_a_small_build_the_manifest_does_not_list_is_refused(
    tmp_path: Path, digits_onnx: ss.OnnxModel
) -> None:
    folder = small_artifact(tmp_path / "b", digits_onnx, listed=False)
    with pytest.raises(ArtifactError, match="does not list"):
        ss.load_predictor(folder)


def test_the_run_decides_by_the_crossover_it_measures(tmp_path: Path) -> None:
    """ONNX Runtime and OpenVINO both within the goal: whichever the run keeps, what it
    records is what it measured (a small build wins every probe up to its limit)."""
    pytest.importorskip("openvino")
    recipe = torch_program_tests.digits_recipe({"candidates": ["onnx", "openvino"]})
    manifest = ss.run_recipe(recipe, tmp_path).artifact.manifest
    notes = " ".join(manifest.notes)
    small = manifest.small_batches
    if small is None:
        assert "Two executables" not in notes
        return
    assert "Two executables" in notes and small["file"] == MODEL_FILE  # one chain: one file
    assert small["runtime"] != manifest.runtime
    kept = [p for p in small["points"] if p[0] <= small["max_tokens"]]
    assert kept and all(small_ms < 0.9 * large_ms for _, small_ms, large_ms in kept)
    assert isinstance(ss.load_predictor(tmp_path / recipe.name), RoutedPredictor)


def test_serve_routes_through_both_builds(
    tmp_path: Path, digits_onnx: ss.OnnxModel, digits_test: ss.Dataset
) -> None:
    pytest.importorskip("tritonclient")
    from slimserve.serve.repository import load_repository
    from tests.serve.conftest import infer_once

    folder = small_artifact(tmp_path / "digits", digits_onnx)
    served = load_repository(folder)["digits"]["1"]
    assert isinstance(served.predictor, RoutedPredictor)
    x = digits_test.inputs["input"][:12]
    expected = OrtPredictor(digits_onnx).predict({"input": x})[0]
    for rows in (1, 12):  # under and over the small build's 4 rows
        got = infer_once(folder, "digits", x[:rows])
        np.testing.assert_allclose(got, expected[:rows], atol=1e-5)
