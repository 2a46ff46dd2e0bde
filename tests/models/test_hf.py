"""Hugging Face encoders: loading from a local folder, export with dynamic batch and
sequence axes, attention fusion, text data, and the errors a user can cause."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import slimserve as ss
from slimserve.core.context import Context
from slimserve.core.errors import DataError, MissingExtraError, ModelLoadError
from slimserve.core.specs import DataSpec
from slimserve.data import Dataset, load_data
from slimserve.models.hf import load_hf, load_tokenizer, tokenize
from slimserve.runtime import OrtPredictor
from slimserve.techniques.export import ExportConfig
from slimserve.techniques.fuse import FuseConfig, op_counts

TEXTS = [
    "The server answers every request.",
    "A short one.",
    "Quantization trades a little accuracy for a lot of speed on most processors.",
]


def torch_outputs(model: ss.TorchModel, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model.module(*(torch.from_numpy(feeds[n]) for n in model.input_names))
    return out.numpy()  # type: ignore[no-any-return]


def test_embeddings_are_mean_pooled_and_unit_length(tiny_bert: Path) -> None:
    model = load_hf(tiny_bert)
    assert model.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert model.output_names == ("embeddings",)
    feeds = tokenize(load_tokenizer(tiny_bert), TEXTS)
    embeddings = torch_outputs(model, feeds)
    assert embeddings.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Padding must not change a text's embedding: alone, it has no padding at all.
    alone = torch_outputs(model, tokenize(load_tokenizer(tiny_bert), TEXTS[1:2]))
    np.testing.assert_allclose(alone[0], embeddings[1], atol=1e-5)


def test_export_has_dynamic_batch_and_sequence_axes(tiny_bert: Path) -> None:
    model = load_hf(tiny_bert)
    onnx_model = ExportConfig().apply(model, Context())
    for value in onnx_model.proto.graph.input:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], (value.name, dims)
    predictor = OrtPredictor(onnx_model)
    tokenizer = load_tokenizer(tiny_bert)
    for texts in (TEXTS[:1], TEXTS, TEXTS * 3):  # batch 1/3/9, sequence lengths differ
        feeds = tokenize(tokenizer, texts)
        (got,) = predictor.predict(feeds)
        np.testing.assert_allclose(got, torch_outputs(model, feeds), atol=1e-4)


def test_fuse_step_fuses_attention_and_keeps_outputs(tiny_bert: Path) -> None:
    model = load_hf(tiny_bert)
    onnx_model = ExportConfig().apply(model, Context())
    data = Dataset(tokenize(load_tokenizer(tiny_bert), TEXTS * 4))
    ctx = Context(data={"calibration": data})
    fused = FuseConfig().apply(onnx_model, ctx)
    counts = op_counts(fused)
    assert counts["Attention"] == 2 and counts["SkipLayerNormalization"] >= 3
    assert ctx.log.details["fuse_parity"]["cosine_min"] > 0.9999
    assert "2 Attention" in ctx.log.notes[0]
    (expected,) = OrtPredictor(onnx_model).predict(data.inputs)
    (got,) = OrtPredictor(fused).predict(data.inputs)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_classification_task_gives_logits(tiny_bert: Path) -> None:
    model = load_hf(tiny_bert, "sequence-classification")
    assert model.output_names == ("logits",)
    logits = torch_outputs(model, tokenize(load_tokenizer(tiny_bert), TEXTS))
    assert logits.shape == (3, 2)


def test_text_data_is_tokenized_with_the_models_tokenizer(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n\n")
    data = load_data(DataSpec(text=path), tokenizer=tiny_bert)
    assert set(data.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert len(data) == 3 and data.inputs["input_ids"].dtype == np.int64
    english = load_data(DataSpec(example="english", split="eval", max_length=16), tiny_bert)
    assert len(english) == 256 and english.inputs["input_ids"].shape[1] <= 16
    with pytest.raises(DataError, match="needs a tokenizer"):
        load_data(DataSpec(text=path))
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(DataError, match="not UTF-8"):
        load_data(DataSpec(text=path), tokenizer=tiny_bert)


def test_a_hub_id_fails_without_touching_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("slimserve tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelLoadError, match="never downloads"):
        load_hf("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf(Path(__file__).parent)
    with pytest.raises(ModelLoadError, match="Unknown task"):
        load_hf(Path(__file__).parent, task="translation")


def test_missing_hf_extra_is_named(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"slimserve\[hf\]"):
        load_hf(tiny_bert)


STATIC_ON_FUSED = {
    "mode": "static",
    "per_channel": True,
    "op_types": ["MatMul", "Attention", "Gather"],  # minilm-static.yaml's choice
}


@pytest.mark.parametrize(
    "quantize",
    [
        {"mode": "dynamic", "per_channel": True},
        {"mode": "dynamic", "activation_scales": "token"},
        STATIC_ON_FUSED,
    ],
    ids=["dynamic", "dynamic-per-token", "static"],
)
def test_text_recipe_export_fuse_quantize(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantize: dict[str, Any]
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # ORT's shape inference may write scratch files into the cwd
    texts = tmp_path / "texts.txt"
    from slimserve.examples.minilm import english_sentences

    texts.write_text("\n".join(english_sentences(96)))
    recipe = ss.parse_recipe(
        {
            "name": "tiny-text",
            "model": {"hf": str(tiny_bert)},
            "data": {"calibration": {"text": str(texts)}, "eval": {"text": str(texts)}},
            "steps": [
                {"export": {}},
                {"fuse": {}},
                {"quantize": quantize},
            ],
            "goal": {"metric": "cosine_mean", "max_drop": 0.05},
            "bench": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1},
        }
    )
    result = ss.run_recipe(recipe, tmp_path / "out")
    assert [s.name.split()[0] for s in result.stages] == ["baseline", "export", "fuse", "quantize"]
    assert result.stages[-1].metrics["cosine_mean"] > 0.95
    artifact = ss.load_artifact(tmp_path / "out" / "tiny-text")
    counts = op_counts(artifact.model)
    assert counts["Attention"] + counts["QAttention"] == 2
    if quantize.get("activation_scales") == "token":
        # MatMuls with a scale per token; Attention float on int8 weights, which the
        # runtime unpacks once at load.
        assert counts["MatMulIntegerToFloat"] == 6 and counts["Attention"] == 2
        graph = artifact.model.proto.graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        assert all(
            producers[n.input[1]] == "DequantizeLinear"
            for n in graph.node
            if n.op_type == "Attention"
        )
        predictor = OrtPredictor(artifact.model)
        assert (
            predictor.session.get_session_options().get_session_config_entry(
                "session.disable_quant_qdq"
            )
            == "1"
        )
    elif quantize["mode"] == "dynamic":
        assert counts["DynamicQuantizeLinear"] + counts["MatMulInteger"] >= 1
    else:  # int8 weights in the MatMuls, the Attention and the embedding Gather only
        assert counts["QuantizeLinear"] >= 1 and counts["DequantizeLinear"] >= 1
        graph = artifact.model.proto
        weights = {i.name for i in graph.graph.initializer}
        int8_weights = {
            n.output[0]
            for n in graph.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in weights
        }
        quantized_ops = {n.op_type for n in graph.graph.node if int8_weights & set(n.input)}
        assert quantized_ops <= {"MatMul", "Attention", "Gather"}, quantized_ops
    feeds = tokenize(load_tokenizer(tiny_bert), TEXTS)
    (got,) = ss.load_predictor(artifact.model).predict(feeds)
    assert got.shape == (3, 64)
    assert list(cwd.iterdir()) == []  # nothing left behind in the user's folder


def test_head_and_ffn_pruning_keeps_the_hf_model_exportable_and_fusable(
    tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from slimserve.examples.minilm import english_sentences

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(english_sentences(64)))
    recipe = ss.parse_recipe(
        {
            "name": "tiny-pruned",
            "model": {"hf": str(tiny_bert)},
            "data": {"train": {"text": str(texts)}, "eval": {"text": str(texts)}},
            "steps": [
                {
                    "prune": {
                        "granularity": "head",
                        "sparsity": 0.5,
                        "finetune": {"epochs": 2, "batch_size": 16, "lr": 1e-4},
                    }
                },
                {"export": {}},
                {"fuse": {}},
            ],
            "goal": {"metric": "cosine_mean", "max_drop": 0.5},
            "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
        }
    )
    result = ss.run_recipe(recipe, tmp_path / "out")
    artifact = ss.load_artifact(tmp_path / "out" / "tiny-pruned")
    assert op_counts(artifact.model)["Attention"] == 2  # fused with the pruned head count
    # ORT warns about the pruned heads' narrower q/k/v, then fuses them right: not the
    # user's concern (the fuse step reports what fused and checks parity).
    assert not [r for r in caplog.records if "hidden size" in r.getMessage()]
    baseline, final = result.stages[0], result.stages[-1]
    assert final.size_bytes < baseline.size_bytes
    assert final.metrics["cosine_mean"] > 0.5  # distilled toward the original embeddings
    feeds = tokenize(load_tokenizer(tiny_bert), TEXTS)
    (got,) = ss.load_predictor(artifact.model).predict(feeds)
    assert got.shape == (3, 64)


def test_a_hugging_face_folder_loads_as_hf(tiny_bert: Path) -> None:
    import slimserve as ss

    model = ss.load_model(tiny_bert)  # a save_pretrained folder, no {hf: ...} needed
    assert model.format == "torch" and getattr(model, "hf_folder", None) == tiny_bert
