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
