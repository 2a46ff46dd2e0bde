"""One-line commands (export, quantize, prune): the recipe they print is a valid recipe,
and running them writes the artifact that recipe would."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app

runner = CliRunner(env={"COLUMNS": "100"})


def test_quantize_prints_the_recipe_it_runs(tmp_path: Path) -> None:
    args = ["quantize", "example:digits", "--mode", "static", "--data", "example:digits:test"]
    result = runner.invoke(app, [*args, "--per-tensor", "--print-recipe"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["steps"] == [{"quantize": {"mode": "static", "per_channel": False}}]
    assert printed["data"]["calibration"] == printed["data"]["eval"]  # --data calibrates
    assert printed["goal"]["metric"] == "accuracy"  # the digits have labels
    path = tmp_path / "recipe.yaml"
    path.write_text(result.output)
    assert ss.load_recipe(path).name == "digits-quantize"  # pasted into a file, it runs


def test_quantize_an_onnx_file_writes_a_verified_artifact(onnx_file: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["quantize", str(onnx_file), "--data", "example:digits:test", "-o", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "Recipe (slimserve optimize FILE runs it" in result.output
    artifact = ss.load_artifact(tmp_path / "digits-quantize")  # hashes checked on load
    assert [s.name for s in artifact.manifest.steps] == ["quantize"]
    assert artifact.manifest.recipe["steps"] == [
        {"quantize": ss.DynamicQuantizeConfig().model_dump(mode="json")}
    ]
    assert "accuracy" in artifact.manifest.final


def test_export_writes_an_onnx_artifact(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "example:digits", "-o", str(tmp_path), "--name", "d"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "model.onnx").is_file()


def test_prune_with_training_data_fine_tunes() -> None:
    result = runner.invoke(
        app,
        [
            "prune",
            "example:digits",
            "-s",
            "0.5",
            "--train",
            "example:digits:train",
            "--epochs",
            "2",
            "--print-recipe",
        ],
    )
    assert result.exit_code == 0, result.output
    steps = yaml.safe_load(result.output)["steps"]
    assert steps[0]["prune"] == {
        "granularity": "unstructured",
        "sparsity": 0.5,
        "finetune": {"epochs": 2},
    }


def test_one_line_errors_say_what_to_give() -> None:
    result = runner.invoke(app, ["quantize", "example:digits", "--mode", "static"])
    assert result.exit_code == 2 and "give --calibration DATA" in result.output
    result = runner.invoke(app, ["quantize", "example:digits", "--mode", "int3"])
    assert result.exit_code == 2 and "--mode is one of dynamic, static" in result.output
    result = runner.invoke(app, ["prune", "example:digits", "-s", "0.5", "--granularity", "x"])
    assert result.exit_code == 2 and "granularity" in result.output


def test_a_hugging_face_folder_is_read_as_hf(tiny_bert: Path) -> None:
    result = runner.invoke(app, ["quantize", str(tiny_bert), "--print-recipe"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["model"] == {"hf": str(tiny_bert.resolve())}
    assert printed["goal"]["metric"] == "cosine_mean"
