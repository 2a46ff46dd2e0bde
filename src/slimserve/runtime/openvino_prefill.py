"""Prompts on OpenVINO, tokens on ONNX Runtime: the decoder LM artifact's own ``model.onnx``
(the model builder's GroupQueryAttention and MatMulNBits graph) compiled by OpenVINO's CPU
plugin for the many-row products of a prompt, while ONNX Runtime keeps the one-row decode
steps.

Why two runtimes: ONNX Runtime's MatMulNBits runs a product of many rows at float32 GEMM
speed whatever its weights' bits (BENCHMARKS.md, llm-prefill-kernels), so a prompt's
prefill is slow; OpenVINO reads the same file (MatMulNBits becomes its weight
decompression, GroupQueryAttention its own operation) and runs those products on its GEMM
kernels (bf16 on AMX / AVX512-BF16 CPUs), several times faster on a prompt, but slower on
one row (measured). No other file: the artifact's listed and hashed model is what both read,
and reading ONNX runs no code from the file.

The cache: a prompt chunk is run with the sequence's earlier keys and values as the past
input and its present outputs written back into the engine's buffers, which ONNX Runtime's
decode steps then read, so the two runtimes share one cache layout (float32, [heads,
tokens, head size] per layer). Precision: ``f32`` keeps float32; ``bf16`` is OpenVINO's
default on CPUs with bf16 kernels, and its fidelity is measured before it is used
(slimserve.llm_prefill).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slimserve.core.errors import require

PrefillPrecision = Literal["f32", "bf16"]


def prefill_precisions() -> list[PrefillPrecision]:
    """The precisions OpenVINO's CPU plugin runs here: float32, and bf16 where it lists
    bf16 kernels (AVX512-BF16 or AMX)."""
    ov: Any = require("openvino", "openvino", "prefill on OpenVINO")
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ["f32", "bf16"] if "BF16" in capabilities else ["f32"]


class OpenvinoPrefill:
    """A decoder LM folder's model compiled by OpenVINO, run on prompt chunks."""

    def __init__(
        self, folder: Path, precision: PrefillPrecision, threads: int = 2, last_only: bool = True
    ) -> None:
        ov: Any = require("openvino", "openvino", "prefill on OpenVINO")
        decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder["num_key_value_heads"])
        self.head_size = int(decoder["head_size"])
        core = ov.Core()
        proto, int8_compute = _folded_onnx(folder / decoder["filename"])
        model = core.read_model(model=proto, weights=b"")
        if last_only:
            _head_on_last_position(model)
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if not int8_compute:
            # OpenVINO quantizes the activations of products with compressed weights to
            # int8 by default (groups of 32); a build whose products compute in float
            # (MatMulNBits accuracy_level below 4) gets float products here too.
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.names = [
            (f"past_key_values.{i}.{kind}", f"present.{i}.{kind}")
            for i in range(self.layers)
            for kind in ("key", "value")
        ]

    def run(
        self, tokens: list[int], past: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The logits for ``tokens`` (every position's; the last one's with ``last_only``)
        after ``past`` (per layer key, value:
        [1, kv heads, earlier tokens, head size]; none: a new sequence), and the presents
        (earlier and new tokens' keys and values, in the same order)."""
        done = 0 if past is None else int(past[0].shape[2])
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), np.float32)
        feed: dict[str, Any] = {
            "input_ids": np.asarray([tokens], np.int64),
            "attention_mask": np.ones((1, done + len(tokens)), np.int64),
        }
        for index, (name, _) in enumerate(self.names):
            feed[name] = empty if past is None else np.ascontiguousarray(past[index])
        out = self.request.infer(feed)
        logits = np.asarray(out["logits"][0], np.float32)
        return logits, [np.asarray(out[present]) for _, present in self.names]

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Every position's next-token logits for ``tokens`` (float32, [len, vocab]; built
        with ``last_only=False``)."""
        return self.run(tokens)[0]


def _folded_onnx(path: Path) -> tuple[bytes, bool]:
    """The model file (its external weights inlined) with every Reshape of a stored weight
    to a stored shape done ahead: the gguf import shares the tied embedding's codes with
    the head's through a Reshape, and OpenVINO's GatherBlockQuantized takes stored data
    only (ONNX Runtime reads the file as it is). And whether its MatMulNBits compute in
    int8 (accuracy_level 4)."""
    import onnx
    from onnx import numpy_helper

    from slimserve.models.onnx import nbits_attribute

    model = onnx.load(str(path))
    levels = nbits_attribute(model, "accuracy_level")
    stored = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type != "Reshape" or not all(name in stored for name in node.input):
            continue
        data, shape = (numpy_helper.to_array(stored[name]) for name in node.input)
        dims = [int(d) or data.shape[i] for i, d in enumerate(shape)]  # 0: keep that dim
        model.graph.initializer.append(numpy_helper.from_array(data.reshape(dims), node.output[0]))
        model.graph.node.remove(node)
    return model.SerializeToString(), levels == {4}


def _head_on_last_position(model: Any) -> None:
    """Run the head (hidden size x vocabulary, a fifth of SmolLM2-135M's weights) on the
    last position only: a prompt's other positions' logits are never read. The head is
    the product that makes ``logits``; its hidden-state input is cut to the last row."""
    import openvino.opset13 as ops

    head = model.output("logits").get_node().input_value(0).get_node()
    if head.get_type_name() != "MatMul":
        return  # another graph shape: keep every position (correct, slower)
    hidden = head.input_value(0)
    last = ops.slice(
        hidden, np.array([-1]), np.array([np.iinfo(np.int64).max]), np.array([1]), np.array([1])
    )
    head.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
