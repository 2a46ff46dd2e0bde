"""Artifacts: round trip, atomic save (crash mid-write), tamper and version checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slimserve as ss
from slimserve import artifact as artifact_module
from slimserve.models.onnx import describe_io


def manifest(model: ss.OnnxModel, name: str = "a") -> ss.Manifest:
    return ss.Manifest(
        name=name,
        created="2026-01-01T00:00:00+00:00",
        slimserve_version=ss.__version__,
        source=artifact_module.SourceRecord(spec={"example": "digits"}, sha256="0" * 64),
        recipe={"name": name},
        io=describe_io(model.proto),
        final={"accuracy": 0.98},
    )


def test_round_trip(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    saved = ss.save_artifact(
        tmp_path / "a", digits_onnx, manifest(digits_onnx), {"report.md": b"# hi"}
    )
    loaded = ss.load_artifact(tmp_path / "a")
    assert loaded.manifest == saved.manifest
    assert loaded.manifest.files["model.onnx"].bytes == len(digits_onnx.to_bytes())
    assert set(loaded.manifest.files) == {"model.onnx", "report.md"}
    assert loaded.model.to_bytes() == digits_onnx.to_bytes()
    assert isinstance(ss.load(tmp_path / "a"), ss.OnnxModel)


def test_crash_mid_write_keeps_previous_artifact(
    tmp_path: Path, digits_onnx: ss.OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a"
    ss.save_artifact(target, digits_onnx, manifest(digits_onnx, "first"), {"report.md": b"one"})
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real_write = artifact_module._write
    calls = []

    def crashing_write(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            real_write(path, data[: len(data) // 2])
            raise KeyboardInterrupt("power cut")
        real_write(path, data)

    monkeypatch.setattr(artifact_module, "_write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        ss.save_artifact(
            target, digits_onnx, manifest(digits_onnx, "second"), {"report.md": b"two"}
        )
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary folder left behind
    monkeypatch.setattr(artifact_module, "_write", real_write)
    assert ss.load_artifact(target).manifest.name == "first"


def test_save_replaces_previous_artifact(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx, "first"))
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx, "second"))
    assert ss.load_artifact(tmp_path / "a").manifest.name == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_refuses_to_replace_a_folder_that_is_not_an_artifact(
    tmp_path: Path, digits_onnx: ss.OnnxModel
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "precious.txt").write_text("keep me")
    with pytest.raises(ss.ArtifactError, match="not a slimserve artifact; refusing to replace"):
        ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx))
    assert (tmp_path / "a" / "precious.txt").read_text() == "keep me"


def test_tampered_model_is_refused(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx))
    model_path = tmp_path / "a" / "model.onnx"
    data = bytearray(model_path.read_bytes())
    data[-10] ^= 0xFF
    model_path.write_bytes(bytes(data))
    with pytest.raises(ss.ArtifactError, match="modified after the artifact was saved"):
        ss.load_artifact(tmp_path / "a")


def test_missing_file_is_refused(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx), {"report.md": b"x"})
    (tmp_path / "a" / "report.md").unlink()
    with pytest.raises(ss.ArtifactError, match="missing from the artifact"):
        ss.load_artifact(tmp_path / "a")


def test_unknown_schema_version_is_refused(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx))
    path = tmp_path / "a" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(ss.ArtifactError, match="schema version 99"):
        ss.load_artifact(tmp_path / "a")


def test_damaged_manifest_and_non_artifact(tmp_path: Path, digits_onnx: ss.OnnxModel) -> None:
    with pytest.raises(ss.ArtifactError, match="no manifest.json"):
        ss.load_artifact(tmp_path)
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx))
    (tmp_path / "a" / "manifest.json").write_text("{not json")
    with pytest.raises(ss.ArtifactError, match="not valid JSON"):
        ss.load_artifact(tmp_path / "a")


def test_manifest_cannot_point_outside_the_artifact(
    tmp_path: Path, digits_onnx: ss.OnnxModel
) -> None:
    ss.save_artifact(tmp_path / "a", digits_onnx, manifest(digits_onnx))
    (tmp_path / "secret").write_text("x")
    path = tmp_path / "a" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    path.write_text(json.dumps(raw))
    with pytest.raises(ss.ArtifactError, match="outside the artifact"):
        ss.load_artifact(tmp_path / "a")
