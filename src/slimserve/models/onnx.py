"""ONNX model state, loading with clear errors, and I/O description."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from slimserve.errors import ModelLoadError, first_line


@dataclass
class OnnxModel:
    """An ONNX ``ModelProto`` held in memory."""

    proto: onnx.ModelProto
    format: str = field(default="onnx", init=False)

    def to_bytes(self) -> bytes:
        data: bytes = self.proto.SerializeToString()
        return data

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
