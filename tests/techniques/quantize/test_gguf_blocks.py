"""A GGUF's own blocks re-expressed exactly (``weights: gguf``): on a tiny Llama stored
as SmolLM2's file is (Q4_1 projections, a Q8_0 embedding), the built model's next-token
logits equal the float model's that transformers dequantizes from the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("gguf")

import slimserve as ss
from slimserve.core.errors import RecipeError
from slimserve.core.specs import ModelSpec
from slimserve.measure.llm import torch_logits
from slimserve.techniques.quantize import gguf_blocks
from tests.models.test_causal_lm import write_gguf


def recipe(model: dict[str, str], prose: Path, **quantize: object) -> ss.Recipe:
    return ss.parse_recipe(
        {
            "name": "tiny-gguf",
            "model": model,
            "data": {"eval": {"text": str(prose), "max_length": 64, "samples": 2}},
            "steps": [{"quantize": {"mode": "llm", "weights": "gguf", **quantize}}],
            "goal": {"metric": "kl_divergence", "max_drop": 0.001},
            "bench": {"repeats": 3},
        }
    )


@pytest.fixture(scope="module")
def blocks_file(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-q4_1.gguf", True)


def test_q4_1_blocks_are_re_expressed_exactly(
    blocks_file: Path, prose: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path / "cache"))
    result = ss.run_recipe(recipe({"gguf": str(blocks_file)}, prose, activations="float"), tmp_path)
    imported = result.stages[-1]
    assert imported.name.endswith("import gguf blocks")
    # float activations: the served weights are the file's, so the logits are the float
    # model's up to float rounding (a re-quantized int4 grid would move them visibly)
    assert imported.metrics["kl_divergence"] < 1e-6
    assert imported.metrics["top1_agreement"] == 1.0
    generator = ss.load_generator(result.artifact.path)
    tokens = generator.encode("the cat sat on the mat")
    reference = torch_logits(ss.load_model(ModelSpec(gguf=blocks_file)), tokens)  # type: ignore[arg-type]
    np.testing.assert_allclose(generator.logits(tokens), reference, atol=1e-4)
    import onnx

    graph = onnx.load(result.artifact.path / "llm" / "model.onnx", load_external_data=False).graph
    table = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    assert made_by[table.input[0]] == "Reshape"  # the tied table reads the head's codes
    # 4.5-bit blocks, not float (the tiny folder also holds its tokenizer)
    assert imported.size_bytes < result.stages[0].size_bytes / 2
    # OpenVINO (the engine's prompt runtime) reads the same file, the shared table included
    pytest.importorskip("openvino")
    from slimserve.runtime.openvino_prefill import OpenvinoPrefill

    folder = result.artifact.model.folder  # type: ignore[union-attr]
    prompts = OpenvinoPrefill(folder, "f32", last_only=False)
    np.testing.assert_allclose(prompts.logits(tokens), reference, atol=1e-3)


def test_rows_decode_as_llama_cpp_lays_them_out() -> None:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((6, 64)).astype(np.float32)
    for kind in ("Q4_0", "Q4_1", "Q8_0"):
        quant = gguf.GGMLQuantizationType[kind]
        packed = gguf.quants.quantize(weights, quant)
        expected = gguf.quants.dequantize(packed, quant)
        decoded = gguf_blocks.decode(kind, packed).dequantized()
        np.testing.assert_allclose(decoded, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(RecipeError, match="Q4_0, Q4_1 and Q8_0.*this file has Q4_K"):
        gguf_blocks.decode("Q4_K", np.zeros((1, 144), np.uint8))


def test_weights_gguf_names_what_it_needs(tiny_llama: Path, prose: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="load the model from one"):
        ss.run_recipe(recipe({"hf": str(tiny_llama)}, prose), tmp_path)
    with pytest.raises(RecipeError, match="drop head, sensitive_layers and method"):
        recipe({"hf": str(tiny_llama)}, prose, head="int8")
