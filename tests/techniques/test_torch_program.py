"""A torch program in the artifact: built, timed against the ONNX model, served."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import slimserve as ss
from slimserve.artifact import PROGRAM_FILE
from slimserve.core.errors import ArtifactError, RecipeError
from slimserve.examples.digits import load_split
from slimserve.runtime import OrtPredictor, TorchPredictor
from slimserve.techniques.torch_program import cpu_bf16_flags, export_program, resolve_dtype


def digits_recipe(
    runtimes: dict[str, Any], steps: list[Any] | None = None, name: str = "digits-rt"
) -> ss.Recipe:
    """The digits CNN with static int8 (by default) and the given runtime choice."""
    return ss.parse_recipe(
        {
            "name": name,
            "model": {"example": "digits"},
            "data": {
                "calibration": {"example": "digits", "split": "train", "samples": 64},
                "eval": {"example": "digits", "split": "test"},
            },
            "steps": steps if steps is not None else [{"quantize": {"mode": "static"}}],
            "goal": {"metric": "accuracy", "max_drop": 0.02},
            "bench": {"batch_sizes": [1, 32], "repeats": 5, "warmup": 1},
            "runtimes": runtimes,
        }
    )


def test_both_runtimes_are_timed_and_the_faster_within_the_goal_is_served(
    tmp_path: Path,
) -> None:
    result = ss.run_recipe(digits_recipe({"candidates": ["onnx", "torch"]}), tmp_path)
    manifest = result.artifact.manifest
    assert PROGRAM_FILE in manifest.files  # hashed like every other file
    rows = {row["stage"]: row for row in manifest.stages}
    program = rows["torch program float32" if not cpu_bf16_flags() else "torch program bfloat16"]
    quantized = rows["quantize static int8"]
    speed = {r["stage"]: r["timings"]["32"]["items_per_s"] for r in (program, quantized)}
    faster = max(speed, key=speed.__getitem__)
    assert manifest.runtime == ("torch" if faster == program["stage"] else "onnx")
    assert any(note.startswith("Serving the") for note in manifest.notes)
    predictor = ss.load_predictor(result.artifact.path)
    expected = TorchPredictor if manifest.runtime == "torch" else OrtPredictor
    assert isinstance(predictor, expected)


def test_a_torch_only_artifact_serves_its_program(tmp_path: Path) -> None:
    from tests.serve.conftest import infer_once

    result = ss.run_recipe(digits_recipe({"candidates": ["torch"]}, steps=[]), tmp_path)
    artifact = result.artifact
    assert artifact.manifest.runtime == "torch"
    # auto: bfloat16 where the CPU has native bf16, float32 elsewhere; recorded either way.
    assert artifact.manifest.precision == ("bfloat16" if cpu_bf16_flags() else "float32")
    x, _ = load_split("test")
    predictor = ss.load_predictor(artifact.path)
    assert isinstance(predictor, TorchPredictor)
    torch_model = ss.load_model("example:digits")
    with torch.no_grad():
        expected = torch_model.module(torch.from_numpy(x)).numpy()  # type: ignore[union-attr]
    # The program matches the precision it records: float32 exactly, bf16 to its ~3 digits.
    tolerance = 1e-5 if artifact.manifest.precision == "float32" else 0.03 * np.abs(expected).max()
    np.testing.assert_allclose(predictor.predict({"input": x})[0], expected, atol=tolerance)

    logits = infer_once(artifact.path, "digits-rt", x[:16])
    np.testing.assert_allclose(logits, expected[:16], atol=tolerance)

    (artifact.path / PROGRAM_FILE).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        ss.load_predictor(artifact.path)


def test_bfloat16_programs_stay_close_and_say_when_emulated(tmp_path: Path) -> None:
    dtype, warning = resolve_dtype("bfloat16")
    assert dtype == torch.bfloat16
    assert (warning is None) == bool(cpu_bf16_flags())
    auto, _ = resolve_dtype("auto")
    assert auto == (torch.bfloat16 if cpu_bf16_flags() else torch.float32)

    model = ss.load_model("example:digits")
    assert isinstance(model, ss.TorchModel)
    program, data = export_program(model, torch.bfloat16)
    x = torch.from_numpy(load_split("test")[0][:64])
    with torch.no_grad():
        got, want = program.module(x), model.module(x)
    assert got.dtype == torch.float32  # outputs come back in float32
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=1)
    assert float(cosine.min()) > 0.999
    assert data[:2] == b"PK"  # a .pt2 archive


def test_a_text_model_program_keeps_dynamic_sequence_length(tiny_bert: Path) -> None:
    from slimserve.models.hf import load_hf

    model = load_hf(tiny_bert)
    program, _ = export_program(model, torch.float32)
    for length in (5, 17):
        ids = torch.randint(1, 50, (3, length))
        mask = torch.ones(3, length, dtype=torch.int64)
        inputs = (ids, mask, torch.zeros_like(ids))[: len(model.input_names)]
        with torch.no_grad():
            np.testing.assert_allclose(
                program.module(*inputs).numpy(), model.module(*inputs).numpy(), atol=1e-5
            )


def test_an_onnx_source_cannot_be_served_as_a_torch_program(onnx_file: Path) -> None:
    with pytest.raises(RecipeError, match="no PyTorch model"):
        ss.parse_recipe(
            {"name": "x", "model": {"path": str(onnx_file)}, "runtimes": {"candidates": ["torch"]}}
        )
    with pytest.raises(RecipeError, match="each once"):
        ss.parse_recipe(
            {
                "name": "x",
                "model": {"example": "digits"},
                "runtimes": {"candidates": ["torch", "torch"]},
            }
        )


def test_the_manifest_of_an_old_artifact_defaults_to_onnx(tmp_path: Path) -> None:
    result = ss.run_recipe(digits_recipe({}, steps=[]), tmp_path)
    raw = json.loads((result.artifact.path / "manifest.json").read_text())
    assert raw["runtime"] == "onnx" and PROGRAM_FILE not in raw["files"]


def test_the_manifest_records_precision_and_cpu_and_loading_elsewhere_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimserve.core.errors import CpuFeatureWarning

    # Chosen on a CPU with native bf16 (the probe overridden; torch and ORT stay real).
    monkeypatch.setenv("SLIMSERVE_CPU_FEATURES", "avx2,avx512_vnni,avx512_bf16")
    result = ss.run_recipe(digits_recipe({"candidates": ["torch"]}, steps=[]), tmp_path)
    manifest = result.artifact.manifest
    assert manifest.precision == "bfloat16"
    assert manifest.cpu_features == ["avx2", "avx512_bf16", "avx512_vnni"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ss.load_predictor(result.artifact.path)  # the same kind of CPU: no warning
    # Served where bf16 is emulated: loading warns, naming the feature and the cost.
    monkeypatch.setenv("SLIMSERVE_CPU_FEATURES", "avx2")
    with pytest.warns(CpuFeatureWarning, match="AVX512-BF16 or AMX-BF16: PyTorch emulates"):
        predictor = ss.load_predictor(result.artifact.path)
    assert isinstance(predictor, TorchPredictor)  # never another precision behind its back

    # An int8 model timed with VNNI warns on an AVX2-only CPU.
    monkeypatch.setenv("SLIMSERVE_CPU_FEATURES", "avx2,avx512_vnni")
    quantized = ss.run_recipe(digits_recipe({}), tmp_path / "q").artifact
    assert quantized.manifest.precision == "int8"
    monkeypatch.setenv("SLIMSERVE_CPU_FEATURES", "avx2")
    with pytest.warns(CpuFeatureWarning, match="AVX512-VNNI"):
        ss.load_predictor(quantized.path)
