"""Dynamic int8 with one activation scale per token (row) instead of one per tensor.

ORT's dynamic quantizer gives each MatMul input a single scale for the whole batch, so
one large token squeezes every other token into a few int8 steps. On transformer
encoders that is most of dynamic int8's error (MiniLM: cosine 0.992 -> 0.997; see
docs/quantization.md). ORT has the kernels for the finer scheme but no quantizer that
emits it, so this module rewrites each float MatMul with a constant weight as

    m  = Max(ReduceMax(|x|, last axis), eps)            # one scale per row
    xq = QuantizeLinear(x / m, 1/63, 64)                # uint8 in [1, 127]
    y  = MatMulIntegerToFloat(xq, Wq, 1/63, w_scale, 64) * m

with ``Wq`` int8 per output column. Activations use 7 bits so that no CPU's int8 kernel
saturates (below). An input that cannot be negative (after Relu) maps [0, m] onto all
128 levels (zero point 0); after GELU (never below -0.17) it is shifted by 0.17 first
and the shift's constant contribution to ``y`` is folded into the following bias.

ORT's fused ``Attention`` op takes only a per-tensor input scale. Its input (a LayerNorm
output with a few outlier channels) is where per-tensor scales hurt most, so here it
keeps float activations and gets int8 weights behind a DequantizeLinear, which ORT
folds once when the session loads (``FOLD_DEQUANTIZE``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from slimserve.runtime.onnx import FOLD_DEQUANTIZE

GELU_FLOOR = 0.17
"""GELU's minimum is -0.16997: x + 0.17 is never negative."""

NON_NEGATIVE = {"Relu", "Sigmoid", "Softplus"}
GELU = {"Gelu", "BiasGelu", "FastGelu"}


def per_token_matmuls(
    proto: onnx.ModelProto, per_channel: bool = True, skip: Callable[[str], bool] | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite float MatMuls with a constant 2-D weight as per-row int8 (module doc).
    Returns the new model and the names of the rewritten nodes; ``skip(name)`` keeps a
    node in float."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    weights = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    opset = _default_opset(proto)
    constants: dict[str, str] = {}

    def constant(value: np.ndarray, name: str) -> str:
        key = f"{name}:{value.dtype}:{value.tobytes().hex()}" if value.size == 1 else name
        if key not in constants:
            graph.initializer.append(numpy_helper.from_array(value, name))
            constants[key] = name
        return constants[key]

    rewritten: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if (
            weight is None
            or len(weight.dims) != 2
            or weight.data_type != onnx.TensorProto.FLOAT
            or (skip is not None and skip(node.name))
        ):
            nodes.append(node)
            continue
        producer = producers.get(node.input[0])
        kind = producer.op_type if producer is not None else ""
        gelu = kind in GELU or (producer is not None and _is_erf_gelu(producer, producers))
        shift = GELU_FLOOR if gelu else 0.0
        non_negative = kind in NON_NEGATIVE or gelu
        # uint8 activations on 7 bits: x86 CPUs without VNNI multiply uint8 x int8 pairs
        # into a saturating int16 (vpmaddubsw), so 255 x 127 x 2 would overflow; 127 x
        # 127 x 2 cannot. (int8 x int8 has no fast kernel there: 3.7x slower on MiniLM.)
        steps, zero_point = (127.0, 0) if non_negative else (63.0, 64)

        w_int, w_scale = _int8_columns(numpy_helper.to_array(weight), per_channel)

        base = node.name or node.output[0]
        out = node.output[0]

        def t(suffix: str, base: str = base) -> str:
            return f"{base}/per_token/{suffix}"

        x = node.input[0]
        new: list[onnx.NodeProto] = []
        if shift:
            new.append(
                _node(
                    "Add",
                    [x, constant(np.array(shift, np.float32), "per_token_gelu_floor")],
                    t("shifted"),
                )
            )
            x = t("shifted")
        magnitude = x
        if not non_negative:
            new.append(_node("Abs", [x], t("abs")))
            magnitude = t("abs")
        axes = constant(np.array([-1], np.int64), "per_token_last_axis")
        if opset >= 18:
            new.append(_node("ReduceMax", [magnitude, axes], t("row_max"), keepdims=1))
        else:
            new.append(_node("ReduceMax", [magnitude], t("row_max"), axes=[-1], keepdims=1))
        eps = constant(np.array(1e-12, np.float32), "per_token_eps")
        new.append(_node("Max", [t("row_max"), eps], t("row_scale")))
        new.append(_node("Div", [x, t("row_scale")], t("unit")))
        step = constant(np.array(1 / steps, np.float32), f"per_token_step_{int(steps)}")
        zp = constant(np.array(zero_point, np.uint8), f"per_token_zero_point_{zero_point}")
        new.append(_node("QuantizeLinear", [t("unit"), step, zp], t("quantized")))
        new.append(
            _node(
                "MatMulIntegerToFloat",
                [
                    t("quantized"),
                    constant(w_int, f"{weight.name}_int8"),
                    step,
                    constant(w_scale, f"{weight.name}_scale"),
                    zp,
                ],
                t("product"),
                domain="com.microsoft",
            )
        )
        correction = -shift * (w_int.astype(np.float32) * w_scale).sum(axis=0)
        folded = shift and _fold_bias(
            graph, out, correction, consumers, graph_outputs, weights, t("bias")
        )
        if shift and not folded:
            new.append(_node("Mul", [t("product"), t("row_scale")], t("rescaled")))
            new.append(
                _node(
                    "Add",
                    [t("rescaled"), constant(correction.astype(np.float32), t("correction"))],
                    out,
                )
            )
        else:
            new.append(_node("Mul", [t("product"), t("row_scale")], out))
        for i, n in enumerate(new):  # unique: an unfolded shift makes two Adds
            n.name = f"{base}/per_token/{i}_{n.op_type}"
        nodes.extend(new)
        rewritten.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    if rewritten:
        _use_microsoft_domain(proto)
    return proto, rewritten


def attention_weight_only(
    proto: onnx.ModelProto, per_channel: bool = True, skip: Callable[[str], bool] | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """Store each fused Attention's QKV weight as int8 behind a DequantizeLinear: the
    file shrinks as with int8, and activations stay float (module doc). The caller marks
    the finished model with ``mark_fold_dequantize``."""
    proto = copy.deepcopy(proto)
    graph = proto.graph
    weights = {i.name: i for i in graph.initializer}
    rewritten: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Attention" else None
        if (
            weight is None
            or weight.data_type != onnx.TensorProto.FLOAT
            or (skip is not None and skip(node.name))
        ):
            nodes.append(node)
            continue
        w_int, scale = _int8_columns(numpy_helper.to_array(weight), per_channel)
        base = node.name or node.output[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(w_int, f"{base}/weight_int8"),
                numpy_helper.from_array(scale, f"{base}/weight_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}/weight_zero"),
            ]
        )
        inputs = [f"{base}/weight_int8", f"{base}/weight_scale", f"{base}/weight_zero"]
        dequantize = _node("DequantizeLinear", inputs, f"{base}/weight")
        if per_channel:
            dequantize.attribute.append(helper.make_attribute("axis", 1))
        dequantize.name = f"{base}/weight/DequantizeLinear"
        node.input[1] = f"{base}/weight"
        nodes.extend([dequantize, node])
        rewritten.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    return proto, rewritten


def _int8_columns(weight: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights in [-127, 127] and their float32 scales: one per output
    column, or one for the whole matrix."""
    w = weight.astype(np.float32)
    scale = np.abs(w).max(axis=0) if per_channel else np.array(np.abs(w).max())
    scale = (np.maximum(scale, 1e-12) / 127).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def mark_fold_dequantize(proto: onnx.ModelProto) -> None:
    """Tell the runtime to fold constant DequantizeLinear nodes at load, unless the model
    also has activation QDQ pairs (whose fusion that would turn off)."""
    producers = {out: n.op_type for n in proto.graph.node for out in n.output}
    paired = any(
        producers.get(n.input[0]) == "QuantizeLinear"
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
    )
    if not paired and not any(p.key == FOLD_DEQUANTIZE for p in proto.metadata_props):
        proto.metadata_props.add(key=FOLD_DEQUANTIZE, value="1")


def _is_erf_gelu(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    """GELU as exporters spell it before opset 20: x * (0.5 * (1 + Erf(x / sqrt 2)))
    (factors in any order): a Mul with x on one side and Erf(x / ...) behind the other."""
    if node.op_type != "Mul":
        return False
    for x, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        frontier = [other]
        for _ in range(3):  # Mul(0.5, ...) -> Add(..., 1) -> Erf
            found = [producers[name] for name in frontier if name in producers]
            for candidate in found:
                if candidate.op_type == "Erf":
                    scaled = producers.get(candidate.input[0])
                    if (
                        scaled is not None
                        and scaled.op_type in {"Div", "Mul"}
                        and x in scaled.input
                    ):
                        return True
            frontier = [i for n in found for i in n.input]
    return False


def _fold_bias(
    graph: onnx.GraphProto,
    output: str,
    correction: np.ndarray,
    consumers: dict[str, list[onnx.NodeProto]],
    graph_outputs: set[str],
    weights: dict[str, onnx.TensorProto],
    name: str,
) -> bool:
    """Add ``correction`` to the bias the output flows into (SkipLayerNormalization's
    bias, or an Add of a constant vector) instead of adding a pass over the output."""
    users = consumers.get(output, [])
    if output in graph_outputs or len(users) != 1:
        return False
    user = users[0]
    if user.op_type == "SkipLayerNormalization" and len(user.input) > 4 and user.input[0] == output:
        slot = 4
    elif user.op_type == "Add":
        slot = 1 if user.input[0] == output else 0
    else:
        return False
    bias = weights.get(user.input[slot])
    if bias is None or tuple(bias.dims) != correction.shape:
        return False
    value = numpy_helper.to_array(bias).astype(np.float32) + correction
    graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    user.input[slot] = name
    return True


def _node(
    op: str, inputs: list[str], output: str, domain: str = "", **attrs: Any
) -> onnx.NodeProto:
    node: onnx.NodeProto = helper.make_node(op, inputs, [output], domain=domain or None)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return node


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)


def _use_microsoft_domain(proto: onnx.ModelProto) -> None:
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _drop_unused(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
