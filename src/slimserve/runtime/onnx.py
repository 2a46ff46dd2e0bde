"""ONNX Runtime predictors: explicit threads, spinning, memory handed back after large runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.runtime.names import check_names

if TYPE_CHECKING:
    from slimserve.models.onnx import OnnxModel

FOLD_DEQUANTIZE = "slimserve.fold_constant_dequantize"
"""Model metadata key: set to "1" when ORT should fold int8 weights behind DequantizeLinear
into float at load (written by the per-token technique, read here)."""


class OrtPredictor:
    """An ONNX Runtime session with explicit thread counts. ``spinning=False`` lets ORT's
    worker threads sleep between runs instead of spinning: a batching server needs those
    cycles for the requests around the model (see ``ServeConfig.ort_spinning``)."""

    def __init__(self, model: OnnxModel, threads: int = 2, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if _folds_dequantize(model):
            # Lets ORT fold int8 weights behind DequantizeLinear into float once, at load
            # (techniques/quantize/per_token.py); the model has no activation QDQ pairs to fuse.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(
            model.to_bytes(), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._input_types = {
            i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()
        }

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        check_names(self.input_names, inputs)
        feeds: dict[str, np.ndarray] = {
            k: np.ascontiguousarray(v, dtype=self._input_types[k]) for k, v in inputs.items()
        }
        if sum(v.size for v in feeds.values()) > LARGE_RUN_ELEMENTS:
            # ORT's arena keeps the peak of its largest run for good: after a run this
            # large, hand what it grew back (one long-text burst would pin it otherwise).
            outputs = list(self.session.run(None, feeds, self._shrink_arena()))
            trim_memory()
            return outputs
        return list(self.session.run(None, feeds))

    def _shrink_arena(self) -> Any:
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options


def _folds_dequantize(model: OnnxModel) -> bool:
    return any(p.key == FOLD_DEQUANTIZE and p.value == "1" for p in model.proto.metadata_props)


def trim_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it in its arenas otherwise, and a
    burst of long texts would leave a server's RSS high for good)."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


LARGE_RUN_ELEMENTS = 1 << 13  # input elements after which a run shrinks ORT's arena

_ORT_TYPES: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
