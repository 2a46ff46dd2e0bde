"""The CLI as a user runs it: exit codes, one-line errors, inspect's tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"slimserve {ss.__version__}"


def test_bad_recipe_exits_2_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "model": {"example": "digits"}, "stepz": []}))
    result = runner.invoke(app, ["optimize", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'stepz'; did you mean 'steps'?" in result.output
    assert "Traceback" not in result.output


def test_debug_shows_the_exception(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "inspect", str(tmp_path / "missing.onnx")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ss.ModelLoadError)


def test_usage_error_exits_2() -> None:
    result = runner.invoke(app, ["optimize"])
    assert result.exit_code == 2


def test_inspect_onnx_file(onnx_file: Path) -> None:
    result = runner.invoke(app, ["inspect", str(onnx_file)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Layers with weights" in result.output
    assert "Conv" in result.output and "Gemm" in result.output
    assert "131,200" in result.output  # fc1: 1024 x 128 + 128
    assert "['batch', 1, 8, 8]" in result.output
    assert "gzip-compressed" in result.output


def test_inspect_torch_factory() -> None:
    result = runner.invoke(app, ["inspect", "example:digits"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Conv2d" in result.output and "151,306 parameters" in result.output


def test_inspect_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.onnx")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_console_script_exit_code(tmp_path: Path) -> None:
    """The installed entry point (not just the Typer app) exits 2 on a user error."""
    exe = Path(sys.executable).parent / "slimserve"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    done = subprocess.run(
        [str(exe), "inspect", str(tmp_path / "x.onnx")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") <= 2 and "does not exist" in done.stderr


def test_help_names_the_extras_with_their_brackets() -> None:
    result = runner.invoke(app, ["optimize", "--help"], env={"COLUMNS": "200"})
    assert "(extra [mlflow])" in result.output


def torch_program_artifact(out: Path, torch_dtype: str) -> ss.Artifact:
    """The digits model served as its torch program (no other step)."""
    recipe = ss.parse_recipe(
        {
            "name": "digits-rt",
            "model": {"example": "digits"},
            "data": {"eval": {"example": "digits", "split": "test"}},
            "steps": [],
            "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
            "runtimes": {"candidates": ["torch"], "torch_dtype": torch_dtype},
        }
    )
    return ss.run_recipe(recipe, out).artifact


def test_report_keeps_every_file_of_the_artifact(tmp_path: Path) -> None:
    """A torch-program artifact: re-rendering its report keeps model.pt2 (and a text
    artifact's tokenizer), so the re-saved artifact still loads and serves."""
    artifact = torch_program_artifact(tmp_path, "auto")
    before = set(artifact.manifest.files)
    assert "model.pt2" in before
    result = runner.invoke(app, ["report", str(artifact.path)])
    assert result.exit_code == 0, result.output
    reloaded = ss.load_artifact(artifact.path)
    assert before <= set(reloaded.manifest.files)
    assert (artifact.path / "model.pt2").is_file()
    ss.load_predictor(artifact.path)  # the program it serves is still there and verifies


def test_check_measures_the_torch_program_an_artifact_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import slimserve.runtime as runtime
    from slimserve.check import Bounds, check_artifact
    from slimserve.runtime import TorchPredictor

    artifact = torch_program_artifact(tmp_path, "float32")
    served: list[object] = []
    real = runtime.load_predictor

    def recording(source, threads=2, spinning=True):  # type: ignore[no-untyped-def]
        predictor = real(source, threads, spinning)
        served.append(predictor)
        return predictor

    monkeypatch.setattr(runtime, "load_predictor", recording)  # records; the real runtime runs
    result = check_artifact(artifact.path, Bounds(repeats=3))
    # The program (no example inputs: loaded from model.pt2) was measured, not model.onnx.
    assert any(isinstance(p, TorchPredictor) and p.model.example_inputs is None for p in served)
    assert result.candidate == pytest.approx(result.baseline, abs=1e-6)  # fp32 program


def test_tables_off_a_terminal_fit_their_content_instead_of_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from rich.console import Console

    from slimserve.cli.base import print_table

    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()  # not a terminal, as a CI log or a pipe
    long = "unstructured magnitude pruning with a polynomial decay schedule"
    row = [long, "70%", "0.9861 (-0.0028)", "1,234.5 items/s", "22.8 MB (25%)", "bfloat16"]
    print_table(
        "stages",
        ["stage", "sparsity", "accuracy", "b32", "size", "dtype"],
        [row],
        to=Console(file=out),
    )
    text = out.getvalue()
    assert "…" not in text and long in text and "1,234.5 items/s" in text
    assert max(len(line) for line in text.splitlines()) > 80  # one line per row, unwrapped
    assert len([line for line in text.splitlines() if "70%" in line]) == 1


def test_bench_columns_are_whole_in_a_pipe(
    onnx_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(onnx_file),
            "--data",
            "example:digits:test",
            "--batch-sizes",
            "1,8",
            "--repeats",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
