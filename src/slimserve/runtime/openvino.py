"""OpenVINO predictors (extra ``[openvino]``): the artifact's ONNX model, read from memory
by OpenVINO's ONNX frontend and compiled for the CPU.

OpenVINO reads the same ``model.onnx`` ONNX Runtime does, QDQ int8 included (it runs the
quantized MatMuls on int8 kernels), so an artifact served by OpenVINO carries no other file
and its one model file stays hashed. Reading ONNX runs no code from the file.

Precision: OpenVINO's CPU plugin runs float layers in bf16 by default where the CPU has
AVX512-BF16 or AMX (its ``INFERENCE_PRECISION_HINT``); ``precision="f32"`` keeps them
float32. Whichever it is, the predictor says (``inference_precision``), and fidelity is
measured on what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from slimserve.core.errors import ModelLoadError, first_line, require
from slimserve.runtime.names import check_names

if TYPE_CHECKING:
    from slimserve.models.onnx import OnnxModel

OpenVinoPrecision = Literal["auto", "f32"]


class OvPredictor:
    """One compiled OpenVINO model and one infer request, with explicit threads.
    ``latency`` asks OpenVINO for one stream (the batch-1 setting); throughput-oriented
    streams would split two cores between requests that a batcher already merges."""

    def __init__(
        self,
        model: OnnxModel,
        threads: int = 2,
        precision: OpenVinoPrecision = "auto",
        latency: bool = True,
    ) -> None:
        ov: Any = require("openvino", "openvino", "The OpenVINO runtime")
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT",
            "NUM_STREAMS": 1,
        }
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            read = core.read_model(model=model.to_bytes(), weights=b"")
            self.compiled = core.compile_model(read, "CPU", config)
            self._recompile: Callable[[], Any] = lambda: core.compile_model(read, "CPU", config)
        except Exception as exc:
            raise ModelLoadError(
                f"OpenVINO could not compile the ONNX model: {first_line(exc)}. Serve it "
                "with ONNX Runtime instead (runtimes: {candidates: [onnx]})."
            ) from exc
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(i.get_any_name() for i in self.compiled.inputs)
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self._input_types = {
            i.get_any_name(): _numpy_type(i.get_element_type().get_type_name())
            for i in self.compiled.inputs
        }
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = str(getattr(hint, "get_type_name", lambda: hint)())

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        check_names(self.input_names, inputs)
        feeds: dict[str, np.ndarray] = {
            k: np.ascontiguousarray(v, dtype=self._input_types[k]) for k, v in inputs.items()
        }
        try:
            results = self.request.infer(feeds)
        except Exception:
            # A failed run can leave the compiled model failing every later run of the
            # same shape (seen: "Reshape ... conflicts" after a sequence longer than the
            # position table; a fresh infer request alone does not help): compile it
            # again, so one bad input costs one recompilation, never the next request.
            self.compiled = self._recompile()
            self.request = self.compiled.create_infer_request()
            raise
        # infer() hands back views of the request's own buffers, which the next run
        # overwrites: copy them out, as ONNX Runtime's results are owned by the caller.
        return [np.array(results[output]) for output in self.compiled.outputs]


def precision_name(inference_precision: str, onnx_precision: str) -> str:
    """What an artifact served by OpenVINO runs in, for the manifest: int8/int4 weights
    stay as the ONNX model has them; float layers run in OpenVINO's inference precision."""
    if onnx_precision in ("int8", "int4"):
        return onnx_precision
    return {"bf16": "bfloat16", "f16": "float16"}.get(inference_precision, "float32")


def _numpy_type(name: str) -> type:
    return _OV_TYPES.get(name, np.float32)


_OV_TYPES: dict[str, type] = {
    "f32": np.float32,
    "f16": np.float16,
    "f64": np.float64,
    "i64": np.int64,
    "i32": np.int32,
    "i8": np.int8,
    "u8": np.uint8,
    "boolean": np.bool_,
}
