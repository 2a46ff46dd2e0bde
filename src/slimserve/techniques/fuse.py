"""The ``fuse`` step: ONNX Runtime's transformer optimizer on an exported encoder —
attention, LayerNorm (with the residual add), GELU and bias fusions — then a parity
check of the fused graph against the unfused one.

The fused ops (``Attention``, ``SkipLayerNormalization``, ``BiasGelu`` ...) are ORT's
contrib ops: the result runs on ONNX Runtime, which is what slimserve serves with.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slimserve.core.context import Context
from slimserve.core.errors import ExportError, first_line
from slimserve.models.onnx import OnnxModel

FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
)


class FuseConfig(BaseModel):
    """Fuse a transformer's subgraphs with ONNX Runtime's transformer optimizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "fuse"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False

    model_type: Literal["bert"] = Field(
        "bert", description="Fusion patterns: 'bert' covers BERT/RoBERTa/MiniLM encoders."
    )
    num_heads: int = Field(0, ge=0, description="Attention heads (0: read from the graph).")
    hidden_size: int = Field(0, ge=0, description="Hidden size (0: read from the graph).")
    embed_layer_norm: bool = Field(
        False,
        description="Fuse the embeddings too (EmbedLayerNormalization); off because the "
        "int8 path quantizes the embedding Gather instead.",
    )
    atol: float = Field(1e-3, gt=0, description="Parity: largest allowed max abs error.")
    min_cosine: float = Field(0.9999, gt=0, le=1, description="Parity: smallest allowed cosine.")

    def describe(self) -> str:
        return "fuse transformer"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        fused = fuse_transformer(model, self)
        before, after = op_counts(model), op_counts(fused)
        found = {op: after[op] for op in FUSED_OPS if after[op] > before[op]}
        ctx.log.details["fused_ops"] = found
        ctx.log.notes.append(
            "Fused: "
            + (", ".join(f"{n} {op}" for op, n in found.items()) if found else "nothing")
            + f"; {sum(before.values())} -> {sum(after.values())} nodes."
        )
        if not found:
            ctx.log.notes.append(
                "No transformer pattern matched: export with the TorchScript exporter and "
                "eager attention (slimserve does both for Hugging Face models)."
            )
        data = ctx.split("calibration", "eval", "train")
        if data is not None:
            stats = parity(model, fused, data.take(16), ctx.threads)
            if stats["max_abs_error"] > self.atol or stats["cosine_min"] < self.min_cosine:
                raise ExportError(
                    f"The fused graph differs from the unfused one: max abs error "
                    f"{stats['max_abs_error']:.3g} (allowed {self.atol:g}), cosine "
                    f"{stats['cosine_min']:.6f} (required {self.min_cosine:g}). Set "
                    "num_heads/hidden_size explicitly, or drop the fuse step."
                )
            ctx.log.details["fuse_parity"] = stats
        return fused


def op_counts(model: OnnxModel) -> Counter[str]:
    return Counter(node.op_type for node in model.proto.graph.node)


def fuse_transformer(model: OnnxModel, config: FuseConfig) -> OnnxModel:
    """The fused graph (ORT's own graph optimizations off: the saved graph stays portable
    across CPUs; ORT applies them again when it loads the model)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from slimserve.models.onnx import scratch_cwd

    proto = scores_scale_as_div(model.proto)
    recorded = {p.key: p.value for p in model.proto.metadata_props}  # set by the export
    num_heads = config.num_heads or int(recorded.get("hf.num_attention_heads", 0))
    hidden_size = config.hidden_size or int(recorded.get("hf.hidden_size", 0))
    options = FusionOptions(config.model_type)
    options.enable_embed_layer_norm = config.embed_layer_norm
    # The optimizer's modules log under top-level names ("fusion_attention", ...), and
    # warn about pruned heads' narrower q/k/v (then fuse them correctly); slimserve
    # reports what fused and checks parity itself.
    logging.disable(logging.WARNING)
    try:
        with scratch_cwd():
            optimized: Any = optimize_model(
                proto,
                model_type=config.model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=options,
                opt_level=0,
            )
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime's transformer optimizer failed: {first_line(exc)}. Set "
            "num_heads/hidden_size explicitly, or drop the fuse step."
        ) from exc
    finally:
        logging.disable(logging.NOTSET)
    fused = optimized.model
    # The fused ops live in ORT's com.microsoft domain; declare it as ORT's own save does
    # (onnx's shape inference, which quantization runs, refuses undeclared domains).
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        entry = fused.opset_import.add()
        entry.domain, entry.version = "com.microsoft", 1
    return OnnxModel(fused)


def parity(
    reference: OnnxModel, candidate: OnnxModel, data: Any, threads: int = 2
) -> dict[str, float]:
    """Fidelity of ``candidate``'s first output against ``reference``'s on ``data``."""
    from slimserve.core.metrics import fidelity
    from slimserve.runtime import OrtPredictor

    inputs = data.renamed(tuple(reference.input_names)).inputs
    expected = OrtPredictor(reference, threads).predict(inputs)[0]
    got = OrtPredictor(candidate, threads).predict(inputs)[0]
    return fidelity(np.asarray(expected), np.asarray(got))


def scores_scale_as_div(proto: Any) -> Any:
    """A copy where attention scores scaled as ``(Q @ K^T) * s`` (transformers 5's eager
    attention) are written ``(Q @ K^T) / (1/s)``, the form ORT's attention fusion looks
    for: with a Mul there, the mask's own Mul is found first and the fusion gives up."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {i.name: i for i in graph.initializer}

    def scalar(name: str) -> float | None:
        if name in constants:
            value = numpy_helper.to_array(constants[name])
        elif name in producers and producers[name].op_type == "Constant":
            attr = producers[name].attribute[0]
            if attr.name != "value":
                return None
            value = numpy_helper.to_array(attr.t)
        else:
            return None
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        left = producers.get(node.input[0])
        scale = scalar(node.input[1])
        users = consumers.get(node.output[0], [])
        if left is None or left.op_type != "MatMul" or not scale or len(users) != 1:
            continue
        add = users[0]
        if add.op_type != "Add" or not any(
            c.op_type == "Softmax" for c in consumers.get(add.output[0], [])
        ):
            continue
        divisor = f"{node.name or node.output[0]}_divisor"
        graph.initializer.append(
            numpy_helper.from_array(np.array(1.0 / scale, dtype=np.float32), divisor)
        )
        node.op_type = "Div"
        node.input[1] = divisor
    return proto
