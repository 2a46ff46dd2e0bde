"""The pipeline and the demo, end to end on the real digits model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app

RECIPE = {
    "name": "digits-test",
    "model": {"example": "digits"},
    "data": {
        "calibration": {"example": "digits", "split": "train", "samples": 64},
        "eval": {"example": "digits", "split": "test", "samples": 128},
    },
    "steps": [{"quantize": {"mode": "static"}}],
    "bench": {"batch_sizes": [1, 8], "warmup": 1, "repeats": 3},
}


def test_run_recipe_records_every_step(tmp_path: Path) -> None:
    recipe = ss.parse_recipe(RECIPE)
    result = ss.run_recipe(recipe, tmp_path)
    assert [s.name for s in result.stages] == ["baseline", "export", "quantize static int8"]
    artifact = ss.load_artifact(tmp_path / "digits-test")
    manifest = artifact.manifest
    assert [s.name for s in manifest.steps] == ["export", "quantize"]
    assert manifest.steps[1].config["mode"] == "static"
    assert manifest.baseline["accuracy"] >= 0.95
    assert manifest.final["accuracy"] >= manifest.baseline["accuracy"] - 0.02
    assert manifest.io["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert manifest.source.sha256 and len(manifest.source.sha256) == 64
    assert manifest.packages["onnxruntime"]
    assert set(manifest.files) == {"model.onnx", "report.md", "report.html", "plots/tradeoff.png"}
    assert manifest.stages[2]["timings"]["8"]["items_per_s"] > 0
    # the resolved recipe re-runs as is
    again = ss.parse_recipe(manifest.recipe)
    assert again == recipe
    report = (tmp_path / "digits-test" / "report.md").read_text()
    assert "| quantize static int8 | onnx |" in report and "Goal" in report
    assert "from `example: digits`" in report and "task" not in manifest.source.spec  # a CNN


def test_failed_run_leaves_previous_artifact(tmp_path: Path) -> None:
    ss.run_recipe(ss.parse_recipe(RECIPE), tmp_path)
    before = (tmp_path / "digits-test" / "manifest.json").read_bytes()
    broken = {
        **RECIPE,
        "data": {
            **RECIPE["data"],
            "calibration": {"example": "digits", "split": "train", "samples": 8},
        },
    }
    with pytest.raises(ss.DataError, match="at least 16"):
        ss.run_recipe(ss.parse_recipe(broken), tmp_path)
    assert (tmp_path / "digits-test" / "manifest.json").read_bytes() == before


def test_optimize_command(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    result = CliRunner().invoke(
        app, ["optimize", str(path), "--out", str(tmp_path / "out")], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "Artifact:" in result.output and "quantize" in result.output
    assert (tmp_path / "out" / "digits-test" / "model.onnx").is_file()


@pytest.mark.slow
def test_demo_on_reduced_budget(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--repeats", "3"], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    for column in ("accuracy", "size", "gzip", "b1 p50 ms", "b32 items/s"):
        assert column in result.output
    for stage in ("baseline", "export", "quantize"):
        assert stage in result.output
    artifact = ss.load_artifact(out / "digits-cnn")
    assert artifact.manifest.final["accuracy"] >= 0.97
    inspect = CliRunner().invoke(app, ["inspect", str(out / "digits-cnn")], env={"COLUMNS": "160"})
    assert inspect.exit_code == 0 and "all file hashes verified" in inspect.output


def test_demo_names_its_examples() -> None:
    result = CliRunner().invoke(app, ["demo", "resnet"])
    assert result.exit_code == 2 and "digits, minilm, smollm2 or smollm2-pruned" in result.output


def test_prune_recipe_reports_layers_plots_and_honesty(tmp_path: Path) -> None:
    recipe = {
        **RECIPE,
        "data": {**RECIPE["data"], "train": {"example": "digits", "split": "train"}},
        "steps": [
            {
                "prune": {
                    "scope": "global",
                    "schedule": {
                        "polynomial_decay": {"final_sparsity": 0.7, "end_step": 30, "frequency": 10}
                    },
                    "finetune": {"epochs": 2},
                }
            },
            {"quantize": {"mode": "dynamic"}},
        ],
    }
    ss.run_recipe(ss.parse_recipe(recipe), tmp_path)
    folder = tmp_path / "digits-test"
    artifact = ss.load_artifact(folder)
    prune_step = artifact.manifest.steps[0]
    assert prune_step.name == "prune"
    assert prune_step.details["sparsity"] == pytest.approx(0.7, abs=0.001)
    assert len(prune_step.details["history"]) == 4
    assert {"plots/step1-schedule.png", "plots/step1-layer-sparsity.png"} <= set(
        artifact.manifest.files
    )
    assert (folder / "plots" / "step1-schedule.png").read_bytes()[:4] == b"\x89PNG"
    report = (folder / "report.md").read_text()
    assert "| prune unstructured 70% | torch |" in report
    assert "| fc1 |" in report and "![schedule](plots/step1-schedule.png)" in report
    assert "not CPU time" in report


def alternatives_recipe(alternatives: Any, runtimes: list[str] | None = None) -> ss.Recipe:
    return ss.parse_recipe(
        {
            "name": "digits-alt",
            "model": {"example": "digits"},
            "data": {
                "calibration": {"example": "digits", "split": "train", "samples": 64},
                "eval": {"example": "digits", "split": "test"},
            },
            "steps": [{"export": {}}],
            "alternatives": alternatives,
            "goal": {"metric": "accuracy", "max_drop": 0.02},
            "bench": {"batch_sizes": [1, 32], "repeats": 3, "warmup": 1},
            "runtimes": {"candidates": runtimes or ["onnx"]},
        }
    )


def test_alternatives_are_all_tried_and_the_fastest_within_the_goal_serves(
    tmp_path: Path,
) -> None:
    recipe = alternatives_recipe(
        [[{"quantize": {"mode": "dynamic"}}], [{"quantize": {"mode": "static"}}], []]
    )
    result = ss.run_recipe(recipe, tmp_path)
    manifest = ss.load_artifact(result.artifact.path).manifest
    rows = {row["stage"]: row for row in manifest.stages}
    # the shared export runs once; each alternative's end is a stage of its own, named
    # after its alternative
    dynamic, static = "alt 1: quantize dynamic int8", "alt 2: quantize static int8"
    assert list(rows) == ["baseline", "export", dynamic, static]
    ends = {dynamic: 1, static: 2, "export": 0}

    def meets(name: str) -> bool:
        return rows[name]["metrics"]["accuracy"] >= manifest.baseline["accuracy"] - 0.02

    speed = {n: rows[n]["timings"]["32"]["items_per_s"] for n in ends if meets(n)}
    winner = max(speed, key=speed.__getitem__)
    # the artifact holds the winner's chain: its steps, its model, its figures
    assert [s.name for s in manifest.steps] == ["export", "quantize"][: 1 + (winner != "export")]
    assert manifest.final == rows[winner]["metrics"]
    note = next(n for n in manifest.notes if n.startswith("Serving the"))
    assert winner in note and "3 alternatives were tried" in note
    assert all(flag in note for flag in manifest.cpu_features)
    assert manifest.recipe["alternatives"][1] == [
        {"quantize": recipe.alternatives[1][0].model_dump(mode="json")}
    ]


def test_an_alternative_that_cannot_follow_the_steps_is_named() -> None:
    with pytest.raises(ss.RecipeError, match=r"alternatives\[1\] \(after steps\).*prune"):
        alternatives_recipe([[{"quantize": {"mode": "dynamic"}}], [{"prune": {"sparsity": 0.5}}]])


def test_a_bad_key_in_an_alternative_names_its_place() -> None:
    with pytest.raises(
        ss.RecipeError,
        match=r"alternatives\[0\]\[0\]\.quantize\.mdoe: unknown key 'mdoe'; did you mean 'mode'",
    ):
        alternatives_recipe([[{"quantize": {"mdoe": "dynamic"}}]])
    with pytest.raises(ss.RecipeError, match="a list of step lists"):
        alternatives_recipe({"quantize": {}})


def test_an_alternative_whose_extra_is_missing_is_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)  # as if [openvino] were not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    recipe = alternatives_recipe(
        [[{"quantize": {"mode": "dynamic"}}], [{"quantize": {"mode": "nncf"}}]],
        runtimes=["onnx", "openvino"],
    )
    manifest = ss.run_recipe(recipe, tmp_path).artifact.manifest
    assert manifest.runtime == "onnx" and [s.name for s in manifest.steps] == [
        "export",
        "quantize",
    ]
    assert any(
        n.startswith("Alternative 2 was not tried") and "slimserve[openvino]" in n
        for n in manifest.notes
    )
    assert any(n.startswith("No OpenVINO stage") for n in manifest.notes)
