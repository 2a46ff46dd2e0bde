"""Artifacts: a folder with model.onnx, manifest.json and a report. Saving writes a
temporary sibling folder and swaps it into place in one atomic ``renameat2(RENAME_EXCHANGE)``
where the OS has it (two renames elsewhere, the previous artifact restored by the next load
or save if a kill lands between them). Loading verifies every file's sha256, refuses an
artifact whose manifest leaves out a file the runtime reads, and with
``SLIMSERVE_SIGNING_KEY`` set checks the manifest's HMAC signature."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hmac
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimserve.core.errors import ArtifactError
from slimserve.core.files import SIGNING_KEY_ENV, sha256_bytes, sha256_file, sign, signing_key
from slimserve.models.edge import EDGE_FILES, EdgeModel, edge_model
from slimserve.models.llm import LlmModel
from slimserve.models.onnx import OnnxModel

MANIFEST_SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # HMAC-SHA256 of manifest.json, when a key is set
PROGRAM_FILE = "model.pt2"  # the torch program (torch_program.py), when runtime is torch
LLM_DIR = "llm"  # a decoder LM's generation folder (onnxruntime-genai), when runtime is genai
GENAI_RUNTIME = "onnxruntime-genai"


def is_artifact(path: str | Path) -> bool:
    """True when ``path`` is a slimserve artifact folder (it holds a manifest)."""
    return (Path(path) / MANIFEST_FILE).is_file()


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
    # What serves the artifact: model.onnx in ONNX Runtime, the torch program model.pt2, or
    # model.onnx in OpenVINO (runtime_precision: auto or f32).
    runtime: Literal["onnx", "torch", "openvino", "onnxruntime-genai", "litert", "executorch"] = (
        "onnx"
    )
    runtime_precision: Literal["auto", "f32"] | None = None
    # A second executable for small batches (runtime/routed.py): {file, runtime, stage, max_tokens}.
    small_batches: dict[str, Any] | None = None
    # A decoder LM's prompts on OpenVINO (llm_prefill.py): {runtime, precision, ttft_ms, fidelity}.
    llm_prefill: dict[str, Any] | None = None
    # What is served's precision and the CPU features (core.cpu) it was verified and timed on.
    precision: str | None = None
    cpu_features: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest
    # LlmModel: a decoder LM's folder (runtime onnxruntime-genai); EdgeModel: a device model
    model: OnnxModel | LlmModel | EdgeModel


def save_artifact(
    path: str | Path,
    model: OnnxModel | LlmModel | EdgeModel,
    manifest: Manifest,
    files: dict[str, bytes] | None = None,
) -> Artifact:
    """Write the artifact atomically: build a temporary sibling, then swap it into place.
    A decoder LM's folder goes under ``llm/``, every file of it listed and hashed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target, clean=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    if isinstance(model, LlmModel):
        model_files = {f"{LLM_DIR}/{n}": p.read_bytes() for n, p in model.files().items()}
    elif isinstance(model, EdgeModel):  # a device model: model.tflite / model.pte
        model_files = {model.file_name: model.to_bytes()}
    else:
        model_files = {MODEL_FILE: model.to_bytes()}
    contents = {**model_files, **(files or {})}
    try:
        tmp.mkdir()
        records = {}
        for name, data in contents.items():
            file_path = tmp / name
            file_path.parent.mkdir(parents=True, exist_ok=True)
            _write(file_path, data)
            records[name] = FileRecord(sha256=sha256_bytes(data), bytes=len(data))
        final = manifest.model_copy(update={"files": records})
        manifest_bytes = final.model_dump_json(indent=2).encode()
        _write(tmp / MANIFEST_FILE, manifest_bytes)
        key = signing_key()
        if key is not None:
            _write(tmp / SIGNATURE_FILE, sign(manifest_bytes, key).encode())
        _fsync_dir(tmp)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if isinstance(model, LlmModel):
        return Artifact(target, final, LlmModel(target / LLM_DIR, model.weights))
    return Artifact(target, final, model)  # an ONNX or a device model


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the OS
    or the file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_into_place(tmp: Path, target: Path) -> None:
    recover(target)
    if not target.exists():
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return
    if not is_artifact(target):
        raise ArtifactError(
            f"'{target}' exists and is not a slimserve artifact; refusing to replace it. "
            "Choose another output folder."
        )
    if _exchange(tmp, target):  # one step: target is the old or the new, never missing
        _fsync_dir(target.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)  # a kill here leaves only .old-*: recover() restores it
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path, clean: bool = False) -> None:
    """Undo a save killed between its two renames (no target, a lone ``.NAME.old-*``
    beside it): the old artifact goes back in place. ``clean`` (a save, which owns the
    folder's siblings) also removes what killed saves left behind."""
    parent = target.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not target.exists() and olds and is_artifact(olds[-1]):
        os.replace(olds[-1], target)
        olds = olds[:-1]
    if clean and target.exists():
        for stale in [*olds, *parent.glob(f".{target.name}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read an artifact; refuse unknown schema versions and files whose hash changed."""
    folder = Path(path)
    recover(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(
            f"'{folder}' is not a slimserve artifact (no {MANIFEST_FILE}). "
            "Give the folder that 'slimserve optimize' wrote."
        )
    manifest_bytes = manifest_path.read_bytes()
    if verify:
        verify_signature(folder, manifest_bytes)
    try:
        raw = json.loads(manifest_bytes)
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
        verify_listed(folder, manifest)
        verify_files(folder, manifest, skip=(MODEL_FILE,))
        verify_nothing_else(folder, manifest)
    if manifest.runtime == GENAI_RUNTIME:  # its files were all verified just above
        return Artifact(folder, manifest, LlmModel(folder / LLM_DIR, manifest.precision or "fp32"))
    if manifest.runtime in EDGE_FILES:  # a device model: model.tflite / model.pte
        data = runtime_file_bytes(folder, EDGE_FILES[manifest.runtime], manifest, verify)
        edge = edge_model(data, manifest.runtime, manifest.io, manifest.precision)
        return Artifact(folder, manifest, edge)
    model_bytes = runtime_file_bytes(folder, MODEL_FILE, manifest, verify)
    import onnx

    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ArtifactError(f"{folder / MODEL_FILE} is not a readable ONNX model ({exc}).") from exc
    return Artifact(folder, manifest, OnnxModel(proto))


def runtime_file_bytes(folder: Path, name: str, manifest: Manifest, verify: bool) -> bytes:
    """The file the runtime reads, refused when missing, unlisted or changed."""
    path = folder / name
    if not path.is_file():
        raise ArtifactError(
            f"'{path}' is missing from the artifact. Restore it or re-run optimize."
        )
    data = path.read_bytes()
    if verify and name not in manifest.files:
        raise ArtifactError(
            f"{folder / MANIFEST_FILE} does not list {name}, which the runtime would read "
            "unchecked. Refusing the artifact: re-save it with 'slimserve optimize'."
        )
    if verify and sha256_bytes(data) != manifest.files[name].sha256:
        raise _tampered(path)  # hashed as read: no swap after the check
    return data


def verify_signature(folder: Path, manifest_bytes: bytes) -> None:
    """With ``SLIMSERVE_SIGNING_KEY`` set, the manifest must carry a matching HMAC."""
    key = signing_key()
    if key is None:
        return
    signature_path = folder / SIGNATURE_FILE
    if not signature_path.is_file():
        raise ArtifactError(
            f"'{folder}' has no {SIGNATURE_FILE}, and {SIGNING_KEY_ENV} is set: refusing an "
            "unsigned artifact. Re-save it with the key set, or unset the key."
        )
    # Compared as bytes: a damaged file may hold anything, and compare_digest refuses
    # strings that are not ASCII.
    supplied = signature_path.read_bytes().strip()
    if not hmac.compare_digest(supplied, sign(manifest_bytes, key).encode()):
        raise ArtifactError(
            f"'{folder}/{MANIFEST_FILE}' does not match its signature: it was changed after "
            f"signing, or signed with another key. Refusing it; check {SIGNING_KEY_ENV}."
        )


def runtime_files(folder: Path, manifest: Manifest) -> list[str]:
    """Every file the runtime reads when it serves the artifact: the ONNX model, the
    torch program when it serves that, every file of the tokenizer's folder."""
    if manifest.runtime == GENAI_RUNTIME:
        llm = folder / LLM_DIR
        return sorted(p.relative_to(folder).as_posix() for p in llm.rglob("*") if p.is_file())
    if manifest.runtime in EDGE_FILES:
        return [EDGE_FILES[manifest.runtime]]
    names = [MODEL_FILE, *([manifest.small_batches["file"]] if manifest.small_batches else [])]
    if manifest.runtime == "torch":
        names.append(PROGRAM_FILE)
    if manifest.text and manifest.text.get("tokenizer"):
        tokenizer = folder / str(manifest.text["tokenizer"])
        if not tokenizer.resolve().is_relative_to(folder.resolve()):
            raise ArtifactError(f"{folder}/{MANIFEST_FILE} names a tokenizer outside the artifact.")
        if tokenizer.is_dir():
            names += sorted(
                p.relative_to(folder).as_posix() for p in tokenizer.rglob("*") if p.is_file()
            )
        else:
            names.append(tokenizer.relative_to(folder).as_posix())
    return names


def verify_listed(folder: Path, manifest: Manifest) -> None:
    """Refuse a file the runtime would read that the manifest does not list (and hash)."""
    unlisted = [n for n in runtime_files(folder, manifest) if n not in manifest.files]
    if unlisted:
        raise ArtifactError(
            f"{folder}/{MANIFEST_FILE} does not list {unlisted}, which the runtime would "
            "read unchecked. Refusing the artifact: re-save it with 'slimserve optimize' "
            "(every runtime file is hashed)."
        )


def verify_nothing_else(folder: Path, manifest: Manifest) -> None:
    """Refuse a file in the folder that the manifest does not cover: nothing in an
    artifact goes unchecked (a runtime or a person could take it for part of it)."""
    covered = {*manifest.files, MANIFEST_FILE, SIGNATURE_FILE}
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if not p.is_dir() and p.relative_to(folder).as_posix() not in covered
    )
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ArtifactError(
            f"'{folder}' holds {shown}, which its manifest does not list or hash. Refusing "
            "the artifact: remove what does not belong to it (keep notes beside the "
            "folder, not in it), or re-save it with 'slimserve optimize'."
        )


def _tampered(file_path: Path) -> ArtifactError:
    return ArtifactError(
        f"'{file_path}' was modified after the artifact was saved (sha256 mismatch). "
        "Refusing to load a tampered file: restore it or re-run 'slimserve optimize'."
    )


def verify_files(folder: Path, manifest: Manifest, skip: tuple[str, ...] = ()) -> None:
    """Every file the manifest lists exists with the recorded size and sha256."""
    for name, record in manifest.files.items():
        if name in skip:
            continue
        file_path = folder / name
        if not file_path.resolve().is_relative_to(folder.resolve()):
            raise ArtifactError(f"{folder}/{MANIFEST_FILE} lists '{name}', outside the artifact.")
        if not file_path.is_file():
            raise ArtifactError(
                f"'{file_path}' is missing from the artifact. Restore it or re-run optimize."
            )
        if file_path.stat().st_size != record.bytes or sha256_file(file_path) != record.sha256:
            raise _tampered(file_path)
