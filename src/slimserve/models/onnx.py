"""ONNX model state, loading with clear errors, and I/O description."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper

from slimserve.core.errors import ModelLoadError, first_line


@dataclass
class OnnxModel:
    """An ONNX ``ModelProto`` held in memory."""

    proto: onnx.ModelProto
    format: str = field(default="onnx", init=False)
    # Which runtime runs it: ONNX Runtime, or OpenVINO (its default precision, bf16 where
    # the CPU has it, or float32 throughout). The same model file either way.
    engine: Literal["onnxruntime", "openvino", "openvino-f32"] = "onnxruntime"

    def to_bytes(self) -> bytes:
        data: bytes = self.proto.SerializeToString()
        return data

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (a ``.onnx`` file) atomically: a failed write
        leaves any earlier file there intact. Returns the path."""
        from slimserve.core.files import write_atomic

        return write_atomic(path, self.to_bytes())

    @property
    def input_names(self) -> tuple[str, ...]:
        initializers = {i.name for i in self.proto.graph.initializer}
        return tuple(i.name for i in self.proto.graph.input if i.name not in initializers)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.proto.graph.output)


def load_onnx(path: Path) -> OnnxModel:
    """Read and check an ONNX file; a truncated or foreign file gets a clear error."""
    if not path.is_file():
        raise ModelLoadError(f"ONNX file '{path}' does not exist.")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ModelLoadError(
            f"'{path}' is not a valid ONNX model ({type(exc).__name__}: {first_line(exc)}). "
            "The file may be truncated or corrupt: export it again."
        ) from exc
    return OnnxModel(proto)


def _dim(d: Any) -> int | str:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param or "?"


def describe_io(proto: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Inputs/outputs as ``{name, dtype, shape}`` with symbolic dims kept as strings."""
    initializers = {i.name for i in proto.graph.initializer}

    def one(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        shape = [_dim(d) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": dtype, "shape": shape}

    return {
        "inputs": [one(v) for v in proto.graph.input if v.name not in initializers],
        "outputs": [one(v) for v in proto.graph.output],
    }


@contextlib.contextmanager
def scratch_cwd() -> Iterator[Path]:
    """Run inside a fresh temporary working directory: ONNX Runtime's symbolic shape
    inference saves ``sym_shape_infer_temp.onnx`` and its weights into the current
    directory when it gives up, which must not litter the user's folder."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="slimserve-") as scratch:
        os.chdir(scratch)
        try:
            yield Path(scratch)
        finally:
            os.chdir(previous)


_PASS_THROUGH = ("Cast", "Identity", "DequantizeLinear", "Reshape", "Unsqueeze", "Squeeze")


def index_bounds(proto: onnx.ModelProto) -> dict[str, int]:
    """{integer graph input: rows of the table it indexes} for inputs that feed a Gather
    (or a fused EmbedLayerNormalization) over a stored table, e.g. token ids into the
    word embeddings. An id outside the table fails the whole run in ONNX Runtime, so a
    server checks ids against these bounds before the model runs."""
    graph = proto.graph
    tables = {i.name: int(i.dims[0]) for i in graph.initializer if len(i.dims) >= 1}
    producers = {out: node for node in graph.node for out in node.output}
    int_types = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type in int_types}

    def source(name: str, data: bool) -> str | None:
        """The graph input (``data=False``) or table (``data=True``) behind ``name``."""
        for _ in range(8):
            if (name in inputs and not data) or (name in tables and data):
                return name
            node = producers.get(name)
            if node is None or node.op_type not in _PASS_THROUGH or not node.input:
                return None
            name = node.input[0]
        return None

    pairs: list[tuple[str, str]] = []
    for node in graph.node:
        if node.op_type in ("Gather", "GatherBlockQuantized") and len(node.input) >= 2:
            axis = next((a.i for a in node.attribute if a.name in ("axis", "gather_axis")), 0)
            if axis == 0:
                pairs.append((node.input[1], node.input[0]))
        elif node.op_type == "EmbedLayerNormalization":
            named = list(node.input)
            pairs += [(named[0], named[2])] + ([(named[1], named[4])] if len(named) > 4 else [])
    bounds: dict[str, int] = {}
    for index, data in pairs:
        name, table = source(index, data=False), source(data, data=True)
        if name is not None and table is not None and name and table:
            bounds[name] = min(bounds.get(name, tables[table]), tables[table])
    return bounds


def position_limit(proto: onnx.ModelProto) -> int | None:
    """How many tokens a sequence may hold: the rows of the encoder's position-embedding
    table (an initializer named for it, or a fused EmbedLayerNormalization's position
    input), or None when the model has none. A longer sequence fails inside the model,
    and in OpenVINO can leave the compiled model failing for the next request too, so a
    server refuses it before it runs."""
    tables = {i.name: int(i.dims[0]) for i in proto.graph.initializer if len(i.dims) == 2}
    found = [rows for name, rows in tables.items() if "position_embeddings" in name]
    for node in proto.graph.node:
        fused = node.op_type == "EmbedLayerNormalization" and len(node.input) > 3
        if fused and node.input[3] in tables:
            found.append(tables[node.input[3]])
    return min(found) if found else None


_INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearConv",
    "QLinearMatMul",
    "QAttention",
    "DynamicQuantizeMatMul",
}


def nbits_attribute(proto: onnx.ModelProto, name: str) -> set[int]:
    """The values the model's MatMulNBits nodes give attribute ``name`` (bits,
    accuracy_level, ...)."""
    return {
        a.i
        for n in proto.graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == name
    }


def precision(proto: onnx.ModelProto) -> str:
    """The lowest precision the model computes in: int4 (MatMulNBits with 4 bits), int8
    (quantized operators), float16 (half initializers), else float32."""
    ops = {node.op_type for node in proto.graph.node}
    if "MatMulNBits" in ops:
        bits = nbits_attribute(proto, "bits")
        return "int4" if 4 in bits or not bits else "int8"
    if ops & _INT8_OPS:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer):
        return "float16"
    return "float32"
