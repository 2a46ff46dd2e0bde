"""slimserve.keras: TF-MOT's Keras pruning workflow on Keras 3 (torch backend), and what
follows it: save, safe reload, export, int8, serving over V2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("keras")

import keras

import slimserve as ss
import slimserve.keras as sparsity
from slimserve.core.errors import SlimserveError
from slimserve.examples.digits import load_split
from slimserve.models.keras import load_keras

BATCH = 32


def digits_mlp(hidden: int = 64) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((1, 8, 8), name="input"),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def compile_for_digits(model: Any) -> Any:
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train_steps(model: Any, steps: int, callbacks: list[Any]) -> Any:
    """Exactly ``steps`` batches of 32 digits, in one epoch."""
    x, y = load_split("train")
    repeat = -(-steps * BATCH // len(x))
    xs, ys = np.tile(x, (repeat, 1, 1, 1))[: steps * BATCH], np.tile(y, repeat)[: steps * BATCH]
    return model.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0, callbacks=callbacks)


def accuracy(model: Any) -> float:
    x, y = load_split("test")
    return float((np.argmax(model.predict(x, verbose=0), axis=1) == y).mean())


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The issue's workflow: PolynomialDecay 0 -> 50 % over 1000 steps, fit with the callback."""
    schedule = sparsity.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=1000
    )
    model = sparsity.prune_low_magnitude(digits_mlp(), pruning_schedule=schedule)
    compile_for_digits(model)
    logs = tmp_path_factory.mktemp("logs")
    train_steps(model, 1000, [sparsity.UpdatePruningStep(), sparsity.PruningSummaries(logs)])
    model.summaries_dir = logs
    return model


@pytest.fixture(scope="module")
def saved(pruned: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    sparsity.strip_pruning(pruned).save(path)
    return path


def test_after_1000_steps_pruned_layers_are_half_zeros(pruned: Any) -> None:
    wrappers = sparsity.collect_prunable_layers(pruned)
    assert [type(w.layer).__name__ for w in wrappers] == ["Dense", "Dense"]  # not Flatten
    assert [w.step for w in wrappers] == [1000, 1000]  # TF-MOT: the step counts batches
    for wrapper in wrappers:
        kernel = wrapper.layer.kernel.value
        assert float((kernel == 0).float().mean()) == pytest.approx(0.5, abs=0.005)
    assert accuracy(pruned) > 0.9


def test_strip_pruning_gives_a_plain_model_that_saves_and_reloads(pruned: Any, saved: Path) -> None:
    stripped = sparsity.strip_pruning(pruned)
    assert not any(isinstance(layer, sparsity.PruneLowMagnitude) for layer in stripped.layers)
    assert [type(layer).__name__ for layer in stripped.layers] == ["Flatten", "Dense", "Dense"]
    for name, zeros in sparsity.pruned_sparsity(stripped).items():
        assert zeros == pytest.approx(0.5, abs=0.005), name
    reloaded = keras.saving.load_model(saved, safe_mode=True)
    x, _ = load_split("test")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_the_stripped_model_exports_quantizes_and_serves(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slimserve optimize` takes the .keras file; the artifact serves over V2."""
    from typer.testing import CliRunner

    from slimserve.cli import app
    from tests.serve.conftest import infer_once

    model = load_keras(saved)
    onnx_model = ss.ExportConfig().apply(model, ss.Context())  # includes the parity check
    x, _ = load_split("test")
    reference = keras.saving.load_model(saved).predict(x, verbose=0)
    np.testing.assert_allclose(
        ss.runtime.load_predictor(onnx_model).predict({"input": x})[0],
        reference,
        rtol=1e-4,
        atol=1e-4,
    )

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: keras-digits\nmodel: {{keras: {saved}}}\n"
        "data:\n  calibration: {example: digits, split: train, samples: 256}\n"
        "  eval: {example: digits, split: test}\n"
        "steps:\n  - quantize: {mode: static, per_channel: true}\n"
        "goal: {metric: accuracy, max_drop: 0.03}\nbench: {repeats: 5, warmup: 1}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["optimize", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    artifact = ss.load_artifact(tmp_path / "out" / "keras-digits")
    assert artifact.manifest.packages.get("keras", "").startswith("3.")
    assert "QuantizeLinear" in {n.op_type for n in artifact.model.proto.graph.node}
    assert artifact.manifest.final["accuracy"] >= artifact.manifest.baseline["accuracy"] - 0.03

    logits = infer_once(artifact.path, "keras-digits", x[:32])
    assert logits.shape == (32, 10)
    assert (np.argmax(logits, 1) == np.argmax(reference[:32], 1)).mean() >= 0.95


def test_masks_move_only_on_frequency_steps() -> None:
    schedule = sparsity.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=200, frequency=100)
    model = compile_for_digits(sparsity.prune_low_magnitude(digits_mlp(), schedule))
    train_steps(model, 150, [sparsity.UpdatePruningStep()])
    wrapper = sparsity.collect_prunable_layers(model)[0]
    assert wrapper.step == 150
    assert wrapper.sparsity() == pytest.approx(schedule.sparsity(100), abs=1e-3)  # set at 100
    train_steps(model, 60, [sparsity.UpdatePruningStep()])  # a second fit goes on counting
    assert wrapper.step == 210
    assert wrapper.sparsity() == pytest.approx(0.6, abs=1e-3)


def test_training_without_the_callback_is_a_clear_error() -> None:
    model = compile_for_digits(sparsity.prune_low_magnitude(digits_mlp()))
    with pytest.raises(SlimserveError, match=r"callbacks=\[slimserve.keras.UpdatePruningStep"):
        train_steps(model, 2, [])


def test_block_sparsity_zeroes_whole_blocks() -> None:
    model = sparsity.prune_low_magnitude(
        digits_mlp(), sparsity.ConstantSparsity(0.5, 0, frequency=1), block_size=(4, 4)
    )
    train_steps(compile_for_digits(model), 3, [sparsity.UpdatePruningStep()])
    kernel = sparsity.strip_pruning(model).layers[1].kernel.value  # (64 in, 64 out)
    blocks = (kernel == 0).float().reshape(16, 4, 16, 4).mean(dim=(1, 3))
    assert set(blocks.unique().tolist()) == {0.0, 1.0}  # a block is all zeros or none
    assert float(blocks.mean()) == pytest.approx(0.5, abs=0.01)


def test_m_by_n_sparsity_zeroes_m_of_every_n_inputs() -> None:
    model = sparsity.prune_low_magnitude(digits_mlp(), sparsity_m_by_n=(2, 4))
    train_steps(compile_for_digits(model), 5, [sparsity.UpdatePruningStep()])
    kernel = sparsity.strip_pruning(model).layers[1].kernel.value  # (in, out)
    kept = (kernel.T != 0).reshape(64, 16, 4).sum(dim=2)  # groups of 4 consecutive inputs
    assert int(kept.max()) == 2 and int(kept.min()) == 2


def test_pruning_summaries_log_sparsity_to_tensorboard(pruned: Any) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(pruned.summaries_dir / "metrics"))
    events.Reload()
    tags = events.Tags()["scalars"]
    sparsities = [t for t in tags if t.endswith("/sparsity")]
    assert len(sparsities) == 2, tags
    final = events.Scalars(sparsities[0])[-1]
    assert final.step == 1000 and final.value == pytest.approx(0.5, abs=0.005)
    train = EventAccumulator(str(pruned.summaries_dir / "train"))
    train.Reload()
    assert "epoch_loss" in train.Tags()["scalars"]


def test_a_wrapped_model_saves_and_reloads_mid_pruning(tmp_path: Path) -> None:
    schedule = sparsity.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=100, frequency=10)
    model = compile_for_digits(sparsity.prune_low_magnitude(digits_mlp(), schedule))
    train_steps(model, 40, [sparsity.UpdatePruningStep()])
    model.save(tmp_path / "pruning.keras")
    with sparsity.prune_scope():
        restored = keras.saving.load_model(tmp_path / "pruning.keras", safe_mode=True)
    wrapper = sparsity.collect_prunable_layers(restored)[0]
    assert wrapper.step == 40  # the callback keeps a restored step
    assert wrapper.pruning_schedule == schedule
    train_steps(compile_for_digits(restored), 60, [sparsity.UpdatePruningStep()])
    assert wrapper.step == 100 and wrapper.sparsity() == pytest.approx(0.5, abs=0.005)


def test_a_single_layer_and_a_list_of_layers_can_be_wrapped() -> None:
    dense = keras.layers.Dense(16)
    wrapped = sparsity.prune_low_magnitude(dense, sparsity.ConstantSparsity(0.5, 0))
    assert (
        isinstance(wrapped, sparsity.PruneLowMagnitude)
        and wrapped.name == f"prune_low_magnitude_{dense.name}"
    )
    listed = sparsity.prune_low_magnitude([keras.layers.Dense(4), keras.layers.Dense(2)])
    model = keras.Sequential([keras.Input((3,)), *listed])
    assert model(np.zeros((1, 3), "float32")).shape == (1, 2)


def test_unsupported_models_and_layers_are_refused_clearly() -> None:
    class Subclassed(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return self.dense(x)

    with pytest.raises(SlimserveError, match="subclassed"):
        sparsity.prune_low_magnitude(Subclassed())

    class Scale(keras.layers.Layer):  # a custom layer with a weight and no get_prunable_weights
        def build(self, shape: Any) -> None:
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x: Any) -> Any:
            return x * self.scale

    model = keras.Sequential([keras.Input((4,)), Scale()])
    with pytest.raises(SlimserveError, match="get_prunable_weights"):
        sparsity.prune_low_magnitude(model)
    with pytest.raises(SlimserveError, match="got str"):
        sparsity.prune_low_magnitude("model.keras")
    with pytest.raises(SlimserveError, match="block_pooling_type"):
        sparsity.prune_low_magnitude(digits_mlp(), block_pooling_type="MIN")  # type: ignore[arg-type]
    with pytest.raises(SlimserveError, match="m zeros in every n"):
        sparsity.prune_low_magnitude(digits_mlp(), sparsity_m_by_n=(4, 2))


def test_a_keras_2_object_is_refused_with_the_way_over() -> None:
    # TensorFlow cannot be installed here; a class from tf_keras' module path stands in for
    # a tf.keras model (slimserve only looks at where the class comes from).
    legacy = type("Sequential", (), {"__module__": "tf_keras.src.engine.sequential"})()
    with pytest.raises(SlimserveError, match=r"Keras 2 / tf.keras.*model.save\('model.keras'\)"):
        sparsity.prune_low_magnitude(legacy)
    with pytest.raises(SlimserveError, match="Keras 2 / tf.keras"):
        sparsity.strip_pruning(legacy)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120
    )


def test_another_keras_backend_is_refused() -> None:
    done = run_python("import slimserve.keras", KERAS_BACKEND="numpy")
    assert done.returncode != 0
    # Keras' numpy backend needs jax, which is not installed: either way, the fix is named.
    assert "'numpy' backend" in done.stderr and "set KERAS_BACKEND=torch" in done.stderr


def test_the_torch_backend_is_chosen_when_none_is_set() -> None:
    done = run_python("import slimserve.keras, keras; print(keras.backend.backend())")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "torch"


@pytest.fixture
def no_keras(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "keras", None)  # as if the extra were not installed
    yield


def test_a_missing_keras_extra_is_named(no_keras: None, saved: Path) -> None:
    with pytest.raises(ss.MissingExtraError, match=r"slimserve\[keras\]"):
        load_keras(saved)


def test_masks_share_the_torch_paths_mask_code() -> None:
    from slimserve.techniques.prune.masks import magnitude_mask

    weight = torch.randn(8, 4)
    layer = sparsity.prune_low_magnitude(keras.layers.Dense(4), sparsity.ConstantSparsity(0.25, 0))
    layer.build((None, 8))
    layer.layer.kernel.assign(weight)
    layer.update_masks(0.25)
    assert torch.equal(layer.masks[0].value, magnitude_mask(weight, 0.25))


def test_a_model_without_an_input_shape_is_pruned_once_fit_builds_it() -> None:
    model = keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4), dtype=np.float32), rng.random((64, 2), dtype=np.float32)
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    assert [w.step for w in sparsity.collect_prunable_layers(pruned)] == [4, 4]
    assert list(sparsity.pruned_sparsity(pruned).values()) == [0.5, 0.5]


def test_a_fit_in_which_the_schedule_never_fires_warns() -> None:
    # TF-MOT's step order: the first batch is step 1, so a begin_step=0 schedule with the
    # default frequency (100) first fires at step 100, after these 22 batches.
    schedule = sparsity.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=1000)
    model = compile_for_digits(sparsity.prune_low_magnitude(digits_mlp(), schedule))
    with pytest.warns(sparsity.PruningScheduleWarning, match=r"never fired .*steps 1-22"):
        train_steps(model, 22, [sparsity.UpdatePruningStep()])
    assert all(v == 0 for v in sparsity.pruned_sparsity(model).values())


def test_a_fit_in_which_the_schedule_fires_does_not_warn() -> None:
    import warnings

    schedule = sparsity.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=20, frequency=10)
    model = compile_for_digits(sparsity.prune_low_magnitude(digits_mlp(), schedule))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sparsity.PruningScheduleWarning)
        train_steps(model, 22, [sparsity.UpdatePruningStep()])
    # TF-MOT stops at end_step, which is itself an update step: the final sparsity is reached.
    assert all(v == pytest.approx(0.5, abs=0.01) for v in sparsity.pruned_sparsity(model).values())
