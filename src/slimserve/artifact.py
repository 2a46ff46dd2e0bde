"""Artifacts: a folder with model.onnx, manifest.json and a report.

Saving writes a temporary sibling folder and renames it into place, so an interrupted
run leaves the previous artifact intact. Loading verifies every file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimserve.errors import ArtifactError
from slimserve.models.onnx import OnnxModel

MANIFEST_SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRecord(_Record):
    sha256: str
    bytes: int


class StepRecord(_Record):
    name: str
    config: dict[str, Any]
    duration_s: float
    metrics: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class SourceRecord(_Record):
    spec: dict[str, Any]
    sha256: str | None = None


class Manifest(_Record):
    """What an artifact is and how it was made; round-trips through JSON."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    created: str
    slimserve_version: str
    source: SourceRecord
    parent: str | None = None
    recipe: dict[str, Any]
    steps: list[StepRecord] = Field(default_factory=list)
    io: dict[str, list[dict[str, Any]]]
    files: dict[str, FileRecord] = Field(default_factory=dict)
    baseline: dict[str, float] = Field(default_factory=dict)
    final: dict[str, float] = Field(default_factory=dict)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    packages: dict[str, str] = Field(default_factory=dict)
    # Text models: {"tokenizer": folder in the artifact, "max_length", "task", "pooling"}.
    text: dict[str, Any] | None = None
    # What serves the artifact: model.onnx in ONNX Runtime, or the torch program model.pt2.
    runtime: Literal["onnx", "torch"] = "onnx"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest
    model: OnnxModel


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(
    path: str | Path, model: OnnxModel, manifest: Manifest, files: dict[str, bytes] | None = None
) -> Artifact:
    """Write the artifact atomically: build a temporary sibling, then swap it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    contents = {MODEL_FILE: model.to_bytes(), **(files or {})}
    try:
        tmp.mkdir()
        records = {}
        for name, data in contents.items():
            file_path = tmp / name
            file_path.parent.mkdir(parents=True, exist_ok=True)
            _write(file_path, data)
            records[name] = FileRecord(sha256=sha256_bytes(data), bytes=len(data))
        final = manifest.model_copy(update={"files": records})
        _write(tmp / MANIFEST_FILE, final.model_dump_json(indent=2).encode())
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(target, final, model)


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _swap_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    if not (target / MANIFEST_FILE).is_file():
        raise ArtifactError(
            f"'{target}' exists and is not a slimserve artifact; refusing to replace it. "
            "Choose another output folder."
        )
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read an artifact; refuse unknown schema versions and files whose hash changed."""
    folder = Path(path)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(
            f"'{folder}' is not a slimserve artifact (no {MANIFEST_FILE}). "
            "Give the folder that 'slimserve optimize' wrote."
        )
    try:
        raw = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{manifest_path} is not valid JSON ({exc}); the artifact is damaged."
        ) from exc
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(
            f"{manifest_path} has schema version {version!r}; this slimserve reads version "
            f"{MANIFEST_SCHEMA_VERSION}. Use the slimserve version that wrote it, or re-run "
            "'slimserve optimize'."
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{manifest_path} is malformed: {exc.errors()[0]['msg']}.") from exc
    if verify:
        verify_files(folder, manifest)
    model_bytes = (folder / MODEL_FILE).read_bytes()
    import onnx

    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ArtifactError(f"{folder / MODEL_FILE} is not a readable ONNX model ({exc}).") from exc
    return Artifact(folder, manifest, OnnxModel(proto))


def verify_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists exists with the recorded size and sha256."""
    for name, record in manifest.files.items():
        file_path = folder / name
        if not file_path.resolve().is_relative_to(folder.resolve()):
            raise ArtifactError(f"{folder}/{MANIFEST_FILE} lists '{name}', outside the artifact.")
        if not file_path.is_file():
            raise ArtifactError(
                f"'{file_path}' is missing from the artifact. Restore it or re-run optimize."
            )
        if file_path.stat().st_size != record.bytes or sha256_file(file_path) != record.sha256:
            raise ArtifactError(
                f"'{file_path}' was modified after the artifact was saved (sha256 mismatch). "
                "Refusing to load a tampered file: restore it or re-run 'slimserve optimize'."
            )
