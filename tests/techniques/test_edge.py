"""Device exports: a Keras 3 model to LiteRT (.tflite) by TensorFlow's converter and a torch
model to ExecuTorch (.pte), each run back in its own runtime and compared with the model
it came from; the artifact hashes the file; the errors a user can cause name the fix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")
pytest.importorskip("executorch")

from slimserve.models.keras import import_keras

keras = import_keras()

import slimserve as ss  # noqa: E402
from slimserve.core.context import Context  # noqa: E402
from slimserve.core.errors import ArtifactError, RecipeError  # noqa: E402
from slimserve.examples.digits import load_split  # noqa: E402
from slimserve.runtime import load_predictor  # noqa: E402
from slimserve.techniques.edge import ExecuTorchExportConfig, LiteRtExportConfig  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Keras 3 CNN trained on the digits (NHWC), saved as a .keras file."""
    keras.utils.set_random_seed(0)
    x, y = load_split("train")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x.transpose(0, 2, 3, 1), y, epochs=4, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    model.save(path)
    return path


def calibration_context(nhwc: bool) -> Context:
    x, _ = load_split("train")
    return Context(
        data={"calibration": ss.Dataset({"input": x.transpose(0, 2, 3, 1) if nhwc else x})}
    )


def test_keras_to_litert_round_trips_in_the_interpreter(keras_file: Path) -> None:
    model = ss.load_model(str(keras_file))
    x, y = load_split("test")
    images = x.transpose(0, 2, 3, 1)
    expected = keras.saving.load_model(keras_file).predict(images, verbose=0)
    ctx = calibration_context(nhwc=True)
    sizes = {}
    for mode in ("float", "int8"):
        tflite = LiteRtExportConfig(quantize=mode).apply(model, ctx)
        sizes[mode] = len(tflite.data)
        got = load_predictor(tflite).predict({"input": images})[0]
        if mode == "float":
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        else:  # full integer: int8 in and out, the predictor does the scaling
            assert set(load_predictor(tflite).input_dtypes.values()) == {"int8"}
            agree = (got.argmax(1) == expected.argmax(1)).mean()
            assert agree > 0.95, agree
            assert abs((got.argmax(1) == y).mean() - (expected.argmax(1) == y).mean()) < 0.03
    assert sizes["int8"] < 0.4 * sizes["float"]


def test_torch_to_executorch_round_trips_in_its_runtime(digits_torch: ss.TorchModel) -> None:
    x, _ = load_split("test")
    rows = x[:33]  # not a multiple of anything: the last slice is padded and cut
    import torch

    with torch.no_grad():
        expected = digits_torch.module(torch.from_numpy(rows)).numpy()
    ctx = calibration_context(nhwc=False)
    program = ExecuTorchExportConfig().apply(digits_torch, ctx)
    got = load_predictor(program).predict({"input": rows})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    int8 = ExecuTorchExportConfig(quantize="int8").apply(digits_torch, ctx)
    got8 = load_predictor(int8).predict({"input": rows})[0]
    assert (got8.argmax(1) == expected.argmax(1)).mean() > 0.9
    assert len(int8.data) < 0.4 * len(program.data)


def test_a_recipe_ends_in_a_hashed_tflite_that_eval_runs_and_serve_refuses(
    keras_file: Path, tmp_path: Path
) -> None:
    recipe = ss.parse_recipe(
        {
            "name": "digits-litert",
            "model": {"path": str(keras_file)},
            "data": {
                "calibration": {"npz": str(npz(tmp_path, "train")), "samples": 128},
                "eval": {"npz": str(npz(tmp_path, "test"))},
            },
            "steps": [{"export": {"format": "litert", "quantize": "int8"}}],
            "goal": {"metric": "accuracy", "max_drop": 0.03},
            "bench": {"batch_sizes": [1, 8], "repeats": 3},
        }
    )
    result = ss.run_recipe(recipe, tmp_path / "runs")
    artifact = result.artifact
    assert artifact.manifest.runtime == "litert" and artifact.manifest.precision == "int8"
    assert (artifact.path / "model.tflite").is_file() and "model.tflite" in artifact.manifest.files
    assert not (artifact.path / "model.onnx").exists()
    final = result.stages[-1].metrics
    assert abs(final["accuracy"] - result.stages[0].metrics["accuracy"]) <= 0.03
    assert any("measured here in its runtime, not served over V2" in n for n in result.notes)
    assert type(load_predictor(artifact.path)).__name__ == "LiteRtPredictor"
    from slimserve.serve.repository import load_repository

    with pytest.raises(ArtifactError, match="device model .*serve an ONNX build"):
        load_repository(artifact.path)
    copy = Path(shutil.copytree(artifact.path, tmp_path / "tampered"))
    data = bytearray((copy / "model.tflite").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_predictor(copy)


def npz(folder: Path, split: str) -> Path:
    """The digits split in NHWC, as the Keras model takes it."""
    x, y = load_split(split)
    path = folder / f"{split}.npz"
    np.savez(path, input=x.transpose(0, 2, 3, 1), labels=y)
    return path


def test_full_integer_without_calibration_names_the_fix(keras_file: Path) -> None:
    model = ss.load_model(str(keras_file))
    with pytest.raises(RecipeError, match="needs calibration data.*data.calibration"):
        LiteRtExportConfig(quantize="int8").apply(model, Context())


def test_a_pytorch_model_to_litert_is_refused_with_the_way_there(
    digits_torch: ss.TorchModel,
) -> None:
    with pytest.raises(RecipeError, match="format: executorch"):
        LiteRtExportConfig().apply(digits_torch, Context())
    with pytest.raises(RecipeError, match="needs a onnx model|needs a"):
        ss.parse_recipe(
            {
                "name": "x",
                "model": {"example": "digits"},
                "steps": [{"export": {"format": "executorch"}}, {"quantize": {"mode": "dynamic"}}],
            }
        )


def test_a_missing_device_extra_is_named(
    digits_torch: ss.TorchModel, keras_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "executorch", None)  # not installed
    with pytest.raises(ss.MissingExtraError, match=r"slimserve\[executorch\]"):
        ExecuTorchExportConfig().apply(digits_torch, Context())
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)
    with pytest.raises(ss.MissingExtraError, match=r"slimserve\[litert\]"):
        LiteRtExportConfig().apply(ss.load_model(str(keras_file)), Context())  # type: ignore[arg-type]


def test_one_line_export_to_a_device_prints_its_recipe() -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app

    args = ["export", "example:digits", "--format", "executorch", "--quantize", "int8"]
    args += ["--calibration", "example:digits:train", "--print-recipe"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "format: executorch" in result.output and "quantize: int8" in result.output
    assert "calibration:" in result.output


@pytest.mark.parametrize("suffix", [".tflite", ".pte"])
def test_a_corrupt_device_file_is_refused_with_its_runtime_named(
    tmp_path: Path, suffix: str
) -> None:
    from slimserve.core.errors import ModelLoadError

    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"not a model at all" * 8)
    runtime = "LiteRT" if suffix == ".tflite" else "ExecuTorch"
    with pytest.raises(ModelLoadError, match=f"{runtime} cannot"):
        load_predictor(path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_predictor(tmp_path / f"missing{suffix}")
