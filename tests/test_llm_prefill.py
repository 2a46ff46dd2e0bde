"""Where a decoder LM's prompts run: OpenVINO on the artifact's own model file, chosen by a
measured time to first token among the precisions whose fidelity meets the goal, recorded
in the manifest and used by the serving engine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")
pytest.importorskip("openvino")
pytest.importorskip("fastapi")

from typer.testing import CliRunner

import slimserve as ss
from slimserve import llm_prefill
from slimserve.cli import app
from slimserve.runtime.openvino_prefill import OpenvinoPrefill, prefill_precisions
from slimserve.serve.config import ServeConfig
from slimserve.serve.repository import _served_llm

MAX_KL = 1e-4


def build(tiny_llama: Path, prose: Path, out: Path, margin: float) -> ss.RunResult:
    recipe = ss.parse_recipe(
        {
            "name": "tiny-llm",
            "model": {"hf": str(tiny_llama)},
            "data": {"eval": {"text": str(prose), "max_length": 48, "samples": 2}},
            "steps": [{"quantize": {"mode": "llm", "weights": "fp32"}}],
            "goal": {"metric": "kl_divergence", "max_drop": MAX_KL},
            "bench": {"repeats": 3},
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llm_prefill, "WIN_MARGIN", margin)
        return ss.run_recipe(recipe, out)


@pytest.fixture(scope="module")
def on_openvino(
    tiny_llama: Path, prose: Path, tmp_path_factory: pytest.TempPathFactory
) -> ss.RunResult:
    """A run where any OpenVINO time wins (the margin made huge): what it records."""
    return build(tiny_llama, prose, tmp_path_factory.mktemp("prefill-ov"), 1e9)


def test_openvino_prompts_are_measured_recorded_and_served(on_openvino: ss.RunResult) -> None:
    manifest = on_openvino.artifact.manifest
    record = manifest.llm_prefill
    assert record is not None and record["runtime"] == "openvino"
    measured = {f"openvino {p}" for p in prefill_precisions()}
    assert set(record["fidelity"]) == measured  # every precision this CPU runs
    # a candidate is timed exactly when its KL on the eval windows meets the goal
    meets = {n for n, m in record["fidelity"].items() if m["kl_divergence"] <= MAX_KL}
    assert set(record["ttft_ms"]) == {"onnxruntime", *meets}
    assert f"openvino {record['precision']}" in meets
    # the float build read by OpenVINO in float32 is the same model
    assert record["fidelity"]["openvino f32"]["kl_divergence"] < 1e-5
    assert record["fidelity"]["openvino f32"]["top1_agreement"] == 1.0
    assert any("Prompts run in openvino" in n for n in manifest.notes)
    shown = CliRunner().invoke(app, ["inspect", str(on_openvino.artifact.path)])
    assert f"Prompts run in OpenVINO {record['precision']}" in shown.output, shown.output
    served = _served_llm("tiny", on_openvino.artifact, 2, ServeConfig())
    try:
        assert served.engine.prefill is not None
        assert served.engine.prefill.precision == record["precision"]
    finally:
        served.engine.close()
    # the server's override: prompts with the decode steps, in ONNX Runtime
    kept = _served_llm("tiny", on_openvino.artifact, 2, ServeConfig(llm_prefill="onnxruntime"))
    try:
        assert kept.engine.prefill is None
    finally:
        kept.engine.close()
    refused = CliRunner().invoke(
        app, ["serve", str(on_openvino.artifact.path), "--llm-prefill", "gpu"]
    )
    assert refused.exit_code != 0 and "llm_prefill" in refused.output, refused.output


def test_openvino_logits_equal_onnx_runtimes_on_the_float_build(
    on_openvino: ss.RunResult, tiny_llama: Path
) -> None:
    """Every position's logits, and the last one's alone (the head cut to it)."""
    import numpy as np

    folder = on_openvino.artifact.model.folder  # type: ignore[union-attr]
    tokens = list(range(5, 45))
    full = OpenvinoPrefill(folder, "f32", last_only=False).logits(tokens)
    expected = ss.Generator(on_openvino.artifact.model).logits(tokens)  # type: ignore[arg-type]
    np.testing.assert_allclose(full, expected, atol=1e-4)
    last, presents = OpenvinoPrefill(folder, "f32").run(tokens)
    np.testing.assert_allclose(last, expected[-1:], atol=1e-4)
    assert presents[0].shape[2] == len(tokens)  # keys of every prompt token


def test_a_slower_openvino_keeps_prompts_in_onnx_runtime(
    tiny_llama: Path, prose: Path, tmp_path: Path
) -> None:
    result = build(tiny_llama, prose, tmp_path, 0.0)  # no OpenVINO time can win
    assert result.artifact.manifest.llm_prefill is None
    assert any(
        "Prompts run in ONNX Runtime with the decode steps" in n
        for n in result.artifact.manifest.notes
    )
    served = _served_llm("tiny", result.artifact, 2, ServeConfig())
    try:
        assert served.engine.prefill is None
    finally:
        served.engine.close()


def test_without_openvino_the_server_warns_and_uses_onnx_runtime(
    on_openvino: ss.RunResult, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    with caplog.at_level(logging.WARNING, logger="slimserve.serve"):
        served = _served_llm("tiny", on_openvino.artifact, 2, ServeConfig())
    try:
        assert served.engine.prefill is None
        assert "pip install 'slimserve[openvino]'" in caplog.text
    finally:
        served.engine.close()


def test_an_openvino_that_cannot_compile_the_model_leaves_prompts_in_onnx_runtime(
    on_openvino: ss.RunResult, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenVINO refusing to compile (here: a precision it does not have): the engine warns
    and serves with ONNX Runtime alone, rather than not starting."""
    from slimserve.serve.llm_engine import LlmEngine

    folder = on_openvino.artifact.model.folder  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="slimserve.serve"):
        engine = LlmEngine(folder, prefill="f64")
    try:
        assert engine.prefill is None
        assert "they run in ONNX Runtime" in caplog.text
    finally:
        engine.close()
