"""The decoder LM demo's short anchors: onnxruntime-genai's builder int8 and int4 made
from the artifact's source and measured beside it, on the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")

import slimserve as ss
from slimserve.examples import llm_anchors


def test_the_builders_builds_are_measured_beside_the_artifact(
    tiny_llama: Path, prose: Path, tmp_path: Path
) -> None:
    recipe = ss.parse_recipe(
        {
            "name": "tiny-llm",
            "model": {"hf": str(tiny_llama)},
            "data": {"eval": {"text": str(prose), "max_length": 48, "samples": 2}},
            "steps": [{"quantize": {"mode": "llm", "weights": "fp32"}}],
            "goal": {"metric": "kl_divergence", "max_drop": 1.0},
            "bench": {"repeats": 3},
        }
    )
    path = ss.run_recipe(recipe, tmp_path).artifact.path
    steps: list[str] = []
    result = llm_anchors.compare(path, rounds=1, log=steps.append)
    rows = {row[0]: row for row in result.rows}
    assert set(rows) == {
        llm_anchors.ARTIFACT,
        "onnxruntime-genai builder -p int8",
        "onnxruntime-genai builder -p int4",
    }
    kl = {name: float(row[4]) for name, row in rows.items()}
    assert kl[llm_anchors.ARTIFACT] < 1e-4  # the float build is the float model
    assert kl["onnxruntime-genai builder -p int8"] < kl["onnxruntime-genai builder -p int4"]
    for row in result.rows:
        assert float(row[2]) > 0 and float(row[3]) > 0  # TTFT ms, decode tokens/s measured
    assert "Against the builder's -p int8 in this run" in result.verdict
    assert any("round 1 of 1" in s for s in steps)
    # the builds are kept beside the artifact for the next demo
    assert (tmp_path / ".anchors" / "tiny-llm-builder-int8" / "genai_config.json").is_file()
