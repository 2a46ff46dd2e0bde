"""Accuracy-aware int4 for a decoder LM: NNCF's weight compression (AWQ, scale estimation,
a sensitivity-chosen int8 share) run on the float32 model the onnxruntime-genai builder
made, with calibration text, then put into the shapes ONNX Runtime runs fast (``nbits``).

NNCF's ONNX backend writes ``MatMulNBits`` below opset 21 and ``DequantizeLinear`` with
blocks from 21 on; the builder's models are opset 21+, whose blockwise DequantizeLinear
ONNX Runtime would have to fuse at load. The model is presented to NNCF as opset 20 (it
reads no other opset-dependent op) so its int4 layers come out as MatMulNBits directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.errors import ExportError, first_line, require

if TYPE_CHECKING:
    from slimserve.techniques.quantize.llm import LlmQuantizeConfig

NNCF_OPSET = 20
SENSITIVITY = {
    "weight_error": "WEIGHT_QUANTIZATION_ERROR",
    "hessian": "HESSIAN_INPUT_ACTIVATION",
    "activation_variance": "MEAN_ACTIVATION_VARIANCE",
    "activation_magnitude": "MEAN_ACTIVATION_MAGNITUDE",
}


def calibration_feeds(folder: Path, tokens: list[int], samples: int) -> list[dict[str, Any]]:
    """The built model's inputs for ``samples`` windows of calibration tokens, each a
    prefill from an empty KV cache (what NNCF runs to collect activation statistics)."""
    import onnx

    from slimserve.models.causal_lm import CALIBRATION_WINDOW, text_windows

    windows = text_windows(tokens, CALIBRATION_WINDOW, samples, "data.calibration")
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    graph = onnx.load(folder / "model.onnx", load_external_data=False).graph
    float_type = np.float16 if _past_type(graph) == onnx.TensorProto.FLOAT16 else np.float32
    kv_shape = (1, int(decoder["num_key_value_heads"]), 0, int(decoder["head_size"]))
    feeds = []
    for window in windows:
        ids = np.asarray([window], dtype=np.int64)
        feed: dict[str, Any] = {}
        for graph_input in graph.input:
            name = graph_input.name
            if name == "input_ids":
                feed[name] = ids
            elif name == "attention_mask":
                feed[name] = np.ones_like(ids)
            elif name == "position_ids":
                feed[name] = np.arange(ids.shape[1], dtype=np.int64)[None]
            elif name.startswith("past_key_values"):
                feed[name] = np.zeros(kv_shape, dtype=float_type)
        feeds.append(feed)
    return feeds


def compress_folder(folder: Path, config: LlmQuantizeConfig, feeds: list[dict[str, Any]]) -> None:
    """Rewrite ``folder``'s float model.onnx in place with NNCF's int4 compression as
    ``config`` asks (``slimserve inspect`` shows the layers by precision)."""
    import onnx

    nncf: Any = require("nncf", "llm", "AWQ, scale estimation and the int4 share")
    from nncf.common.logging import nncf_logger

    nncf_logger.setLevel(logging.WARNING)  # its bit-width table is inspect's job
    from slimserve.techniques.quantize import nbits

    model = onnx.load(folder / "model.onnx")
    nbits.untie_embedding(model)
    opset = model.opset_import[0].version
    model.opset_import[0].version = NNCF_OPSET
    options: dict[str, Any] = {
        "mode": getattr(nncf.CompressWeightsMode, "INT4_SYM" if config.symmetric else "INT4_ASYM"),
        "group_size": config.group_size,
        "ratio": config.int4_share,
        "dataset": nncf.Dataset(feeds),
        "subset_size": len(feeds),
        "sensitivity_metric": getattr(nncf.SensitivityMetric, SENSITIVITY[config.sensitivity]),
    }
    if config.awq:
        options["awq"] = True
    if config.scale_estimation:
        options["scale_estimation"] = True
    head = _head_matmul(model)
    if config.head == "float" and head is not None:
        options["ignored_scope"] = nncf.IgnoredScope(names=[head])
    try:
        compressed = nncf.compress_weights(model, **options)
    except Exception as exc:
        raise ExportError(f"NNCF's weight compression failed: {first_line(exc)}") from exc
    compressed.opset_import[0].version = opset
    nbits.pack_zero_points(compressed)
    level = 4 if config.activations == "int8" else 1
    nbits.per_channel_to_blocks(compressed, config.group_size, level)
    nbits.share_tied_table(compressed)
    nbits.set_accuracy_level(compressed, level)
    for stale in folder.glob("model.onnx*"):
        stale.unlink()
    onnx.save(
        compressed, folder / "model.onnx", save_as_external_data=True, location="model.onnx.data"
    )


def _head_matmul(model: Any) -> str | None:
    """The name of the MatMul that makes the logits (the LM head)."""
    outputs = {o.name for o in model.graph.output if o.name == "logits"}
    return next((n.name for n in model.graph.node if set(n.output) & outputs), None)


def _past_type(graph: Any) -> int:
    for graph_input in graph.input:
        if graph_input.name.startswith("past_key_values"):
            return int(graph_input.type.tensor_type.elem_type)
    return 1
