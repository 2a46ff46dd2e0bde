"""A GGUF's own quantized blocks re-expressed exactly in ONNX Runtime's operators, instead
of quantizing its dequantized weights a second time (``quantize: {mode: llm, weights:
gguf}``).

llama.cpp's classic block formats map onto MatMulNBits without loss (blocks of 32):

- Q4_0, ``d * (q - 8)``: 4 bits, scale ``d``, the default zero point 8;
- Q4_1, ``d * q + m``: the same, plus an offset ``m + 8 d`` per block (``nbits`` adds it
  by a small float MatMul of the input's block sums: integer zero points cannot carry
  Q4_1's float minimum, which is why every other 4-bit grid re-quantizes it);
- Q8_0, ``d * q``: 8 bits, codes ``q + 128``, the default zero point 128.

The embedding table becomes a GatherBlockQuantized of the same blocks when it is Q8_0.

llama.cpp's converter permutes the rows of Llama's q and k projections (its rotary
layout); transformers un-permutes them when it dequantizes, and so does this import. Every
re-expressed weight is checked against the float model the builder made from the same
file: a mismatch (a step before changed the weights, an architecture this does not map) is
refused, never served.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from slimserve.core.errors import RecipeError
from slimserve.techniques.quantize.nbits import QuantizedRows

BLOCK = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
PROJECTIONS = {
    "attn.q_proj": ["attn_q"],
    "attn.k_proj": ["attn_k"],
    "attn.v_proj": ["attn_v"],
    "attn.qkv_proj": ["attn_q", "attn_k", "attn_v"],
    "attn.o_proj": ["attn_output"],
    "mlp.gate_proj": ["ffn_gate"],
    "mlp.up_proj": ["ffn_up"],
    "mlp.down_proj": ["ffn_down"],
}


def decode(kind: str, raw: np.ndarray) -> QuantizedRows:
    """A GGUF tensor's raw bytes [rows, blocks * block bytes] as QuantizedRows."""
    if kind not in BLOCK_BYTES:
        raise RecipeError(
            f"weights: gguf re-expresses Q4_0, Q4_1 and Q8_0 blocks exactly; this file has "
            f"{kind}: use weights: int4 or int8 (which quantize its float weights)."
        )
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, BLOCK_BYTES[kind])
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q8_0":
        codes = blocks[..., 2:].copy().view(np.int8).astype(np.int16) + 128
        return QuantizedRows(8, BLOCK, codes.astype(np.uint8).reshape(rows, -1), scale)
    start = 4 if kind == "Q4_1" else 2
    packed = blocks[..., start : start + BLOCK // 2]
    # llama.cpp's order: the low nibbles are the block's first 16 weights, the high the rest
    codes = np.concatenate([packed & 15, packed >> 4], axis=-1).reshape(rows, -1)
    if kind == "Q4_0":
        return QuantizedRows(4, BLOCK, codes, scale)
    # d * q + m, as d * (q - 8) + (m + 8 d): the default zero point, and m + 8 d added
    minimum = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    return QuantizedRows(4, BLOCK, codes, scale, offsets=minimum + 8 * scale)


def rotary_order(rows: int, heads: int) -> np.ndarray:
    """Which GGUF row each Hugging Face row of a q/k projection is (transformers'
    reverse permutation of llama.cpp's rotary layout)."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(rows)


def gguf_weights(file: Path, config: Any) -> dict[str, QuantizedRows]:
    """The file's projection weights by Hugging Face name ('model.layers.0.attn.q_proj'
    style, rows in transformers' order), and its embedding ('embed_tokens')."""
    import gguf

    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    found: dict[str, QuantizedRows] = {}
    for tensor in gguf.GGUFReader(file).tensors:
        kind = tensor.tensor_type.name
        if kind not in BLOCK_BYTES:
            continue
        blocks = decode(kind, np.asarray(tensor.data))
        match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", tensor.name)
        if tensor.name == "token_embd.weight":
            found["embed_tokens"] = blocks
        elif tensor.name == "output.weight":
            found["lm_head"] = blocks
        elif match:
            layer, part = match.groups()
            if part in ("attn_q", "attn_k"):
                count = heads if part == "attn_q" else kv_heads
                blocks = blocks.rows(rotary_order(blocks.codes.shape[0], count))
            found[f"{layer}.{part}"] = blocks
    found.setdefault("lm_head", found.get("embed_tokens"))  # type: ignore[arg-type]
    return {k: v for k, v in found.items() if v is not None}


def import_blocks(model: Any, file: Path, config: Any, accuracy_level: int) -> int:
    """Replace the built float model's MatMul weights (and its embedding table) by the
    GGUF's own blocks; returns how many weights were replaced. A weight that does not
    equal its float counterpart is a RecipeError."""
    from onnx import numpy_helper

    from slimserve.techniques.quantize import nbits

    weights = gguf_weights(file, config)
    nbits.untie_embedding(model)
    initializers = {i.name: i for i in model.graph.initializer}
    replaced = 0
    for node in list(model.graph.node):
        weight_name = _weight_input(node, initializers)
        if weight_name is None:
            continue
        blocks = _blocks_for(weight_name, node.op_type, weights)
        if blocks is None:
            continue
        weight = numpy_helper.to_array(initializers[weight_name])
        expected = weight.T if node.op_type == "MatMul" else weight
        _check_equal(blocks, expected, weight_name)
        nbits.replace_with_blocks(model, node, weight_name, blocks, accuracy_level)
        replaced += 1
    nbits.share_tied_table(model)
    if not replaced:
        raise RecipeError(
            f"weights: gguf found none of the model's weights among '{file.name}''s Q4_0, "
            "Q4_1 or Q8_0 tensors."
        )
    return replaced


def _weight_input(node: Any, initializers: dict[str, Any]) -> str | None:
    if node.op_type == "MatMul" and node.input[1] in initializers:
        return str(node.input[1])
    if node.op_type == "Gather" and node.input[0] in initializers:
        return str(node.input[0])
    return None


def _blocks_for(name: str, op_type: str, weights: dict[str, QuantizedRows]) -> QuantizedRows | None:
    if op_type == "Gather":
        table = weights.get("embed_tokens")
        return table if table is not None and table.offsets is None and table.bits == 8 else None
    if name.startswith("lm_head"):
        return weights.get("lm_head")
    match = re.fullmatch(r"model\.layers\.(\d+)\.(\w+\.\w+)\.MatMul\.weight", name)
    if not match or match.group(2) not in PROJECTIONS:
        return None
    layer, projection = match.groups()
    parts = [weights.get(f"{layer}.{part}") for part in PROJECTIONS[projection]]
    if any(p is None for p in parts):
        return None
    present = [p for p in parts if p is not None]
    if len({(p.bits, p.offsets is None) for p in present}) != 1:
        raise RecipeError(
            f"weights: gguf: {name} fuses GGUF tensors of different block formats; "
            "use weights: int4 or int8."
        )
    offsets = [p.offsets for p in present if p.offsets is not None]
    return QuantizedRows(
        present[0].bits,
        BLOCK,
        np.concatenate([p.codes for p in present]),
        np.concatenate([p.scales for p in present]),
        offsets=np.concatenate(offsets) if offsets else None,
    )


def _check_equal(blocks: QuantizedRows, expected: np.ndarray, name: str) -> None:
    values = blocks.dequantized()
    if values.shape != expected.shape:
        raise RecipeError(
            f"weights: gguf: the file's {name} is {values.shape}, the model's "
            f"{expected.shape}: the model is not this GGUF's (or a step changed its shape)."
        )
    error = float(np.abs(values - expected).max())
    if error > 1e-5 * max(float(np.abs(expected).max()), 1e-6):
        raise RecipeError(
            f"weights: gguf: the file's {name} differs from the model's by up to {error:.3g}: "
            "a step before the quantize step changed the weights, or the model is not this "
            "GGUF's. Put the quantize step first, or use weights: int4 or int8."
        )
