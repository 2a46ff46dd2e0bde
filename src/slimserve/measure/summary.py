"""What a model is made of: I/O, a per-layer table, parameter count, size raw and gzip."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimserve.models import LlmModel, Model, OnnxModel


def model_bytes(model: Model) -> bytes:
    """The model as stored: ONNX protobuf, or a torch state dict as safetensors."""
    from slimserve.models import OnnxModel

    if isinstance(model, OnnxModel) or getattr(model, "format", "") in ("litert", "executorch"):
        return model.to_bytes()  # type: ignore[union-attr]
    from safetensors.torch import save

    # Shared tensors (tied weights; Keras lists each weight twice) are stored once.
    state, seen = {}, set()
    for name, value in model.module.state_dict().items():
        key = (value.data_ptr(), value.dtype, tuple(value.shape))
        if key not in seen:
            seen.add(key)
            state[name] = value.detach().contiguous()
    return bytes(save(state))


def model_size(model: Model) -> tuple[int, int]:
    """(raw bytes, gzip-compressed bytes): zeros from pruning show in the second."""
    raw = model_bytes(model)
    return len(raw), len(gzip.compress(raw, compresslevel=6, mtime=0))


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    params: int
    dtype: str
    sparsity: float


@dataclass(frozen=True)
class Summary:
    format: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    layers: list[Layer] = field(default_factory=list)
    params: int = 0
    size_bytes: int = 0
    compressed_bytes: int = 0

    @property
    def sparsity(self) -> float:
        """Fraction of exactly-zero weights over all layers."""
        zeros = sum(layer.sparsity * layer.params for layer in self.layers)
        return zeros / self.params if self.params else 0.0


def _torch_io(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of a PyTorch (or Keras) model as ONNX shows them: dims from
    the example inputs (outputs from one run on them), dynamic axes by name."""
    import torch

    def row(name: str, tensor: Any, axes: dict[int, str]) -> dict[str, Any]:
        shape: list[Any] = [axes.get(i, d) for i, d in enumerate(tensor.shape)]
        return {"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": shape}

    unknown = {"dtype": "float32", "shape": []}
    if not model.example_inputs:
        return (
            [{"name": n, **unknown} for n in model.input_names],
            [{"name": n, **unknown} for n in model.output_names],
        )
    dynamic = model.dynamic_axes or {}
    inputs = [
        row(n, t, {0: "batch"} | dynamic.get(n, {}))
        for n, t in zip(model.input_names, model.example_inputs, strict=False)
    ]
    try:
        with torch.no_grad():
            result = model.module(*model.example_inputs)
    except Exception:  # a model that needs more than its examples: shapes stay unknown
        return inputs, [{"name": n, **unknown} for n in model.output_names]
    values = result if isinstance(result, (tuple, list)) else (result,)
    outputs = [
        row(n, torch.as_tensor(v), {0: "batch"})
        for n, v in zip(model.output_names, values, strict=False)
    ]
    return inputs, outputs


def summarize(model: Model) -> Summary:
    """Describe a model: its I/O, layers with weights, and its size."""
    raw, compressed = model_size(model)
    if isinstance(model, OnnxModel):
        from slimserve.models.onnx import describe_io

        io = describe_io(model.proto)
        layers = _onnx_layers(model)
        inputs, outputs = io["inputs"], io["outputs"]
    elif model.format in ("litert", "executorch"):  # a device model: what its runtime shows
        from slimserve.runtime.edge import edge_io, litert_weights

        inputs, outputs = edge_io(model)  # type: ignore[arg-type]
        layers = [
            Layer(name, "weight", count, dtype, zeros)
            for name, count, dtype, zeros in (
                litert_weights(model) if model.format == "litert" else []  # type: ignore[arg-type]
            )
        ]
    else:
        layers = _torch_layers(model.module)
        inputs, outputs = _torch_io(model)
    params = sum(layer.params for layer in layers)
    return Summary(model.format, inputs, outputs, layers, params, raw, compressed)


_QDQ_OPS = {"DequantizeLinear", "QuantizeLinear"}
_SHAPE_OPS = {"Reshape", "Expand", "Tile", "Slice", "Pad", "Resize", "Squeeze", "Unsqueeze"}


def _onnx_layers(model: OnnxModel) -> list[Layer]:
    from onnx import numpy_helper

    graph = model.proto.graph
    weights = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def owner(tensor: str) -> Any:
        """The compute node a weight feeds, looking through DequantizeLinear (QDQ).

        None for bookkeeping: quantization scales/zero points and shape constants.
        """
        nodes = consumers.get(tensor, [])
        if not nodes:
            return None
        node = nodes[0]
        if node.op_type in _QDQ_OPS:
            if node.input[0] != tensor:
                return None
            return owner(node.output[0]) or node
        if node.op_type in _SHAPE_OPS and list(node.input).index(tensor) > 0:
            return None
        return node

    rows: dict[str, dict[str, Any]] = {}
    for name, init in weights.items():
        array = numpy_helper.to_array(init)
        if array.size <= 1:
            continue  # scales and zero points are bookkeeping, not layers' weights
        node = owner(name)
        if node is None:
            continue
        key = node.name or node.output[0]
        row = rows.setdefault(key, {"op": node.op_type, "params": 0, "zeros": 0, "dtypes": {}})
        row["params"] += int(array.size)
        row["zeros"] += int(np.count_nonzero(array == 0))
        row["dtypes"][array.dtype.name] = row["dtypes"].get(array.dtype.name, 0) + array.size
    return [
        Layer(
            name,
            row["op"],
            row["params"],
            max(row["dtypes"], key=row["dtypes"].get),
            row["zeros"] / row["params"] if row["params"] else 0.0,
        )
        for name, row in rows.items()
    ]


def _keras_layers(model: Any) -> list[Layer]:
    """Keras layers by their Keras names (torch's view lists each weight twice)."""
    layers = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.weights:  # a nested model
            layers.extend(_keras_layers(layer))
            continue
        values = [w.value for w in layer.weights]
        if not values:
            continue
        count = sum(int(v.numel()) for v in values)
        zeros = sum(int((v == 0).sum()) for v in values)
        dtype = str(values[0].dtype).removeprefix("torch.")
        layers.append(Layer(layer.name, type(layer).__name__, count, dtype, zeros / count))
    return layers


def _torch_layers(module: Any) -> list[Layer]:
    from slimserve.models.keras import is_keras

    if is_keras(module):
        return _keras_layers(module.keras_model)
    layers = []
    for name, sub in module.named_modules():
        params = list(sub.parameters(recurse=False))
        if not params:
            continue
        count = sum(p.numel() for p in params)
        zeros = sum(int((p == 0).sum()) for p in params)
        layers.append(
            Layer(
                name or type(module).__name__,
                type(sub).__name__,
                count,
                str(params[0].dtype).removeprefix("torch."),
                zeros / count if count else 0.0,
            )
        )
    return layers


def llm_precisions(model: LlmModel) -> list[tuple[str, int, int]]:
    """A decoder LM build's weight layers by precision: (precision, layers, parameters),
    read from its ONNX graph without loading the weights (MatMulNBits carries its bits,
    its K x N and its group size as attributes)."""
    import onnx

    proto = onnx.load(str(model.folder / "model.onnx"), load_external_data=False)
    shapes = {i.name: list(i.dims) for i in proto.graph.initializer}
    counts: dict[str, list[int]] = {}
    for node in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            kind = f"int{attrs.get('bits', 4)} (groups of {attrs.get('block_size', '?')})"
            params = int(attrs.get("K", 0)) * int(attrs.get("N", 0))
        elif node.op_type == "GatherBlockQuantized":  # a quantized embedding table
            bits = int(attrs.get("bits", 4))
            kind = f"int{bits} (groups of {attrs.get('block_size', '?')})"
            params = int(np.prod(shapes.get(node.input[0], [0]))) * (8 // bits)
        elif node.op_type in ("MatMul", "Gather"):
            weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
            if weight not in shapes:
                continue
            kind, params = "float32", int(np.prod(shapes[weight]))
        else:
            continue
        entry = counts.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += params
    return sorted(((k, v[0], v[1]) for k, v in counts.items()), key=lambda r: -r[2])
