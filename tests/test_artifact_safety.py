"""An artifact cannot be made to run code or to serve a file its manifest does not hash,
and a save killed at any instant leaves a loadable artifact."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import slimserve as ss
from slimserve.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    PROGRAM_FILE,
    SIGNATURE_FILE,
    sha256_bytes,
)
from slimserve.core.errors import ArtifactError, ModelLoadError
from slimserve.techniques.torch_program import export_program
from tests.conftest import manifest_for


@pytest.fixture(scope="module")
def program_bytes(digits_torch: ss.TorchModel) -> bytes:
    return export_program(digits_torch, torch.float32)[1]


@pytest.fixture
def torch_artifact(tmp_path: Path, digits_onnx: ss.OnnxModel, program_bytes: bytes) -> Path:
    folder = tmp_path / "digits"
    ss.save_artifact(
        folder, digits_onnx, manifest_for(digits_onnx, "torch"), {PROGRAM_FILE: program_bytes}
    )
    return folder


def rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace one file and re-hash it in the manifest, as an attacker with write access
    to the folder (but no signing key) can."""
    (folder / name).write_bytes(data)
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    raw["files"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    (folder / MANIFEST_FILE).write_text(json.dumps(raw))


def edit_archive(data: bytes, edit: Callable[[str, bytes], bytes]) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, edit(name, source.read(name)))
    return out.getvalue()


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    marker = ""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def pickled_weight(data: bytes, marker: Path) -> bytes:
    """The program with its first weight switched to a torch.save payload (use_pickle)."""
    config = next(
        n
        for n in zipfile.ZipFile(io.BytesIO(data)).namelist()
        if n.endswith("model_weights_config.json")
    )
    payload_name = ""

    def switch(name: str, content: bytes) -> bytes:
        nonlocal payload_name
        if name == config:
            parsed = json.loads(content)
            first = next(iter(parsed["config"].values()))
            first["use_pickle"] = True
            payload_name = name.rsplit("/", 1)[0] + "/" + first["path_name"]
            return json.dumps(parsed).encode()
        return content

    switched = edit_archive(data, switch)
    Payload.marker = str(marker)
    buffer = io.BytesIO()
    torch.save(Payload(), buffer)
    return edit_archive(switched, lambda n, c: buffer.getvalue() if n == payload_name else c)


def program_json_edit(data: bytes, pattern: str, new: str) -> bytes:
    """The program with the first match of ``pattern`` in its graph JSON replaced."""

    def edit(name: str, content: bytes) -> bytes:
        if name.endswith("models/model.json"):
            text, count = re.subn(pattern, new, content.decode(), count=1)
            assert count == 1
            return text.encode()
        return content

    return edit_archive(data, edit)


def test_a_pickled_weight_in_the_program_is_refused_and_never_runs(
    torch_artifact: Path, program_bytes: bytes, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    rewrite(torch_artifact, PROGRAM_FILE, pickled_weight(program_bytes, marker))
    with pytest.raises(ArtifactError, match="stored as a pickle"):
        ss.load_predictor(torch_artifact)
    assert not marker.exists()
    # The same file given directly as a model is refused the same way.
    direct = tmp_path / "evil.pt2"
    direct.write_bytes((torch_artifact / PROGRAM_FILE).read_bytes())
    with pytest.raises(ModelLoadError, match="stored as a pickle"):
        ss.load_model(str(direct))
    assert not marker.exists()


def test_torch_export_load_would_have_run_the_payload(program_bytes: bytes, tmp_path: Path) -> None:
    """What the check above guards against is real on this torch."""
    marker = tmp_path / "payload-ran"
    with pytest.raises(Exception):  # noqa: B017 - it fails only after running it
        torch.export.load(io.BytesIO(pickled_weight(program_bytes, marker)))
    assert marker.exists()


def test_a_node_calling_python_is_refused(torch_artifact: Path, program_bytes: bytes) -> None:
    evil = program_json_edit(
        program_bytes, r'"target": "torch\.ops\.aten\.[^"]*"', '"target": "torch.os.system"'
    )
    rewrite(torch_artifact, PROGRAM_FILE, evil)
    with pytest.raises(ArtifactError, match="torch.os.system"):
        ss.load_predictor(torch_artifact)


def test_a_symbolic_shape_that_is_code_is_refused(
    torch_artifact: Path, program_bytes: bytes
) -> None:
    evil = program_json_edit(
        program_bytes, r'"expr_str": "[^"]*"', '"expr_str": "__import__(\'os\').getcwd()"'
    )
    rewrite(torch_artifact, PROGRAM_FILE, evil)
    with pytest.raises(ArtifactError, match="symbolic shape"):
        ss.load_predictor(torch_artifact)


def test_a_clean_program_still_serves(torch_artifact: Path, digits_test: ss.Dataset) -> None:
    x = digits_test.inputs["input"][:8]
    predictor = ss.load_predictor(torch_artifact)
    expected = ss.load_predictor(torch_artifact / MODEL_FILE).predict({"input": x})[0]
    np.testing.assert_allclose(predictor.predict({"input": x})[0], expected, atol=1e-4)


@pytest.mark.parametrize("remove", [[MODEL_FILE], "all"])
def test_a_model_left_out_of_the_manifest_is_refused(
    tmp_path: Path, digits_onnx: ss.OnnxModel, remove: list[str] | str
) -> None:
    folder = tmp_path / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    raw["files"] = (
        {} if remove == "all" else {k: v for k, v in raw["files"].items() if k not in remove}
    )
    (folder / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"does not list \['model.onnx'\]"):
        ss.load_artifact(folder)


def test_a_program_left_out_of_the_manifest_is_refused(torch_artifact: Path) -> None:
    raw = json.loads((torch_artifact / MANIFEST_FILE).read_text())
    del raw["files"][PROGRAM_FILE]
    (torch_artifact / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="model.pt2"):
        ss.load_predictor(torch_artifact)


def test_a_swapped_in_model_is_refused(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    folder = tmp_path / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    other = ss.ExportConfig().apply(ss.load_model("example:digits"), ss.Context()).to_bytes()
    (folder / MODEL_FILE).write_bytes(other + b"\0")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        ss.load_artifact(folder)


def test_an_unlisted_tokenizer_file_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    texts = tmp_path / "texts.txt"
    texts.write_text("One sentence.\nAnother one, a little longer.\n")
    recipe = ss.parse_recipe(
        {
            "name": "tiny-text",
            "model": {"hf": str(tiny_bert)},
            "data": {"eval": {"text": str(texts)}},
            "steps": [{"export": {}}],
            "goal": {"metric": "cosine_mean"},
            "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
        }
    )
    artifact = ss.run_recipe(recipe, tmp_path).artifact.path
    ss.load_artifact(artifact)
    tokenizer = artifact / str(ss.load_artifact(artifact).manifest.text["tokenizer"])  # type: ignore[index]
    (tokenizer / "added_tokens.json").write_text('{"zzz": 5}')
    with pytest.raises(ArtifactError, match="added_tokens.json"):
        ss.load_artifact(artifact)


def test_an_unlisted_file_in_the_folder_is_refused(
    tmp_path: Path, digits_onnx: ss.OnnxModel
) -> None:
    folder = tmp_path / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx), {"report.md": b"# r"})
    ss.load_artifact(folder)  # what the save wrote is all listed
    (folder / "extra.onnx").write_bytes(digits_onnx.to_bytes())
    with pytest.raises(ArtifactError, match="holds extra.onnx, which its manifest does not"):
        ss.load_artifact(folder)
    (folder / "extra.onnx").unlink()
    (folder / "plots").mkdir()
    (folder / "plots" / "x.png").write_bytes(b"png")
    with pytest.raises(ArtifactError, match="plots/x.png"):
        ss.load_artifact(folder)


def test_a_missing_model_file_is_a_one_line_error(
    tmp_path: Path, digits_onnx: ss.OnnxModel
) -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app

    folder = tmp_path / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    (folder / MODEL_FILE).unlink()
    with pytest.raises(ArtifactError, match="model.onnx' is missing from the artifact"):
        ss.load_artifact(folder)
    for command in ("inspect", "serve"):
        result = CliRunner().invoke(app, [command, str(folder)])
        assert result.exit_code != 0
        assert "is missing from the artifact" in result.output
        assert "Traceback" not in result.output and "FileNotFoundError" not in result.output


def test_a_signature_that_is_not_ascii_is_refused_not_a_crash(
    tmp_path: Path, digits_onnx: ss.OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMSERVE_SIGNING_KEY", "s3cret")
    folder = tmp_path / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    (folder / SIGNATURE_FILE).write_bytes("signé ✓".encode())
    with pytest.raises(ArtifactError, match="does not match its signature"):
        ss.load_artifact(folder)


def test_signed_artifacts(
    tmp_path: Path, digits_onnx: ss.OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))  # unsigned
    monkeypatch.setenv("SLIMSERVE_SIGNING_KEY", "s3cret")
    with pytest.raises(ArtifactError, match="unsigned"):
        ss.load_artifact(folder)
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    assert (folder / SIGNATURE_FILE).is_file()
    ss.load_artifact(folder)
    # A forged manifest (rehashed after a swap) no longer matches its signature.
    rewrite(folder, MODEL_FILE, (folder / MODEL_FILE).read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="does not match its signature"):
        ss.load_artifact(folder)
    monkeypatch.setenv("SLIMSERVE_SIGNING_KEY", "another")
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    monkeypatch.setenv("SLIMSERVE_SIGNING_KEY", "s3cret")
    with pytest.raises(ArtifactError, match="another key"):
        ss.load_artifact(folder)
    monkeypatch.setenv("SLIMSERVE_SIGNING_KEY", "")
    with pytest.raises(ArtifactError, match="empty"):
        ss.load_artifact(folder)


# A save in a child process that dies (os._exit, no cleanup) at one of its renames.
KILLED_SAVE = """
import os, sys
import slimserve as ss
from slimserve import artifact
from tests.conftest import manifest_for
from slimserve.models.onnx import load_onnx
from pathlib import Path
model = load_onnx(Path(sys.argv[1]))
point, mode = sys.argv[3], sys.argv[4]
real_replace, real_exchange = os.replace, artifact._exchange
calls = []
def replace(a, b):
    calls.append(a)
    if point == "before-first" and len(calls) == 1: os._exit(9)
    real_replace(a, b)
    if point == "after-first" and len(calls) == 1: os._exit(9)
    if point == "after-second" and len(calls) == 2: os._exit(9)
def exchange(a, b):
    if mode == "two-renames": return False
    if point == "before-first": os._exit(9)
    done = real_exchange(a, b)
    if point == "after-first": os._exit(9)
    return done
artifact.os.replace = replace
artifact._exchange = exchange
model.proto.doc_string = "new"
ss.save_artifact(sys.argv[2], model, manifest_for(model))
"""


@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
@pytest.mark.parametrize("point", ["before-first", "after-first", "after-second"])
def test_a_save_killed_at_any_rename_leaves_a_loadable_artifact(
    tmp_path: Path, onnx_file: Path, digits_onnx: ss.OnnxModel, point: str, mode: str
) -> None:
    repo = tmp_path / "repo"
    folder = repo / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    root = Path(__file__).parent.parent
    child = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(onnx_file), str(folder), point, mode],
        cwd=root,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    # Killed where asked (exit 9). Only an exchange that succeeded has no second rename to
    # die at; where the file system cannot exchange, that save falls back to two renames.
    may_finish = mode == "exchange" and point == "after-second"
    assert child.returncode in ((0, 9) if may_finish else (9,)), child.stderr.decode()[-2000:]
    loaded = ss.load_artifact(folder)  # the old or the new, never missing
    assert loaded.model.proto.doc_string in (digits_onnx.proto.doc_string, "new")
    if point == "after-first" and mode == "two-renames":
        assert loaded.model.proto.doc_string == digits_onnx.proto.doc_string  # restored
    # A repository never serves the dot-folders a killed save leaves.
    pytest.importorskip("fastapi")
    from slimserve.serve.repository import load_repository

    assert list(load_repository(repo)) == ["digits"]
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    assert sorted(p.name for p in repo.iterdir()) == ["digits"]  # the next save cleans up
