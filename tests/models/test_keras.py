"""Loading Keras 3 models: safe mode, clear refusals, and recipes that take a .keras file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from slimserve.models.keras import import_keras

keras = import_keras()

import slimserve as ss  # noqa: E402
from slimserve.core.errors import ModelLoadError, RecipeError  # noqa: E402
from slimserve.models.keras import load_keras  # noqa: E402


def small_model() -> object:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


def test_a_keras_file_loads_as_a_torch_model_and_exports(tmp_path: Path) -> None:
    model = small_model()
    model.save(tmp_path / "m.keras")
    loaded = ss.load_model(str(tmp_path / "m.keras"))
    assert isinstance(loaded, ss.TorchModel)
    assert loaded.example_inputs is not None and loaded.example_inputs[0].shape == (2, 6)
    onnx_model = ss.ExportConfig().apply(loaded, ss.Context())
    x = np.random.default_rng(1).standard_normal((5, 6)).astype("float32")
    got = ss.runtime.load_predictor(onnx_model).predict({"input": x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_a_file_that_needs_unsafe_deserialization_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelLoadError, match="needs unsafe deserialization"):
        load_keras(tmp_path / "lambda.keras")


def test_unreadable_and_keras_2_files_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.keras"
    corrupt.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="not a readable .keras file"):
        load_keras(corrupt)
    legacy = tmp_path / "model.h5"
    small_model().save(legacy)  # Keras 3 still writes the legacy HDF5 format
    with pytest.raises(ModelLoadError, match=r"legacy HDF5 \(Keras 2 / tf.keras\)"):
        ss.load_model(str(legacy))
    saved_model = tmp_path / "exported"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="TensorFlow SavedModel"):
        load_keras(saved_model)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_keras(tmp_path / "missing.keras")


def test_a_recipe_refuses_torch_training_steps_on_a_keras_model(tmp_path: Path) -> None:
    small_model().save(tmp_path / "m.keras")
    raw = {
        "name": "k",
        "model": {"keras": "m.keras"},
        "steps": [{"prune": {"schedule": {"constant_sparsity": {"target_sparsity": 0.5}}}}],
    }
    with pytest.raises(RecipeError, match=r"steps\[0\] 'prune'.*slimserve.keras"):
        ss.parse_recipe(raw, base=tmp_path)
    recipe = ss.parse_recipe({**raw, "steps": [{"quantize": {}}]}, base=tmp_path)
    assert recipe.model.keras == tmp_path / "m.keras"


def test_cli_inspects_and_evaluates_a_keras_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app

    model = keras.Sequential(
        [keras.Input((1, 8, 8)), keras.layers.Flatten(), keras.layers.Dense(10, name="logits")]
    )
    model.save(tmp_path / "digits.keras")
    runner = CliRunner()
    shown = runner.invoke(app, ["inspect", str(tmp_path / "digits.keras")], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "logits" in shown.output and "650 parameters" in shown.output  # counted once
    # shapes as a served model has them: a dynamic batch, and the output's own shape
    assert "['batch', 1, 8, 8]" in shown.output and "['batch', 10]" in shown.output
    scored = runner.invoke(
        app, ["eval", str(tmp_path / "digits.keras"), "--data", "example:digits:test"]
    )
    assert scored.exit_code == 0, scored.output
    assert "accuracy" in scored.output
