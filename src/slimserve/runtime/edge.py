"""Device models run on this machine: a ``.tflite`` in LiteRT's interpreter
(``ai-edge-litert``) and a ``.pte`` in ExecuTorch's runtime, behind the same
``predict(inputs) -> outputs`` as every predictor, so ``eval``, ``bench`` and ``check``
measure them beside ONNX Runtime.

A full-integer ``.tflite`` takes and gives int8 tensors (what a microcontroller feeds
it): the predictor quantizes float inputs with the input's scale and zero point and
dequantizes the outputs, as a device's glue code does. Shapes fixed at conversion (an
ExecuTorch program exported for one row; a LiteRT model whose batch cannot be resized)
are run one slice at a time and concatenated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimserve.core.errors import ModelLoadError, first_line, require
from slimserve.models.edge import EdgeModel


def edge_predictor(model: EdgeModel, threads: int = 2) -> Any:
    """The predictor for ``model``'s format."""
    if model.format == "litert":
        return LiteRtPredictor(model, threads)
    return ExecuTorchPredictor(model, threads)


class LiteRtPredictor:
    """A ``.tflite`` model in LiteRT's interpreter, through its first signature."""

    def __init__(self, model: EdgeModel, threads: int = 2) -> None:
        require("ai_edge_litert", "litert", "Running a LiteRT (.tflite) model")
        from ai_edge_litert.interpreter import Interpreter

        self.input_names, self.output_names = model.input_names, model.output_names
        self._data, self._threads = model.data, threads
        try:
            interpreter = Interpreter(model_content=model.data, num_threads=threads)
            (self._key,) = list(interpreter.get_signature_list())[:1]
            runner = interpreter.get_signature_runner(self._key)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot read the model: {first_line(exc)}.") from exc
        self._inputs = runner.get_input_details()
        self._outputs = runner.get_output_details()
        self._runner = runner
        self.input_dtypes = {k: np.dtype(v["dtype"]).name for k, v in self._inputs.items()}

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self._inputs, (inputs[n] for n in self.input_names), strict=True))
        rows = len(next(iter(feeds.values())))
        fixed = {int(d["shape_signature"][0]) for d in self._inputs.values()}
        step = rows if fixed == {-1} else max(fixed.pop(), 1)
        parts = [
            self._run({k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, rows, step)
        ]
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        quantized = {k: _quantize(v, self._inputs[k]) for k, v in feeds.items()}
        try:
            out = self._runner(**quantized)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"LiteRT could not run inputs of shapes "
                f"{[v.shape for v in quantized.values()]}: {first_line(exc)}."
            ) from exc
        return [_dequantize(out[k], self._outputs[k]) for k in sorted(out)]


def _quantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f" or value.dtype.kind != "f":
        return value.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    quantized: np.ndarray = np.clip(np.round(value / scale) + zero, info.min, info.max)
    return quantized.astype(dtype)


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if value.dtype.kind == "f" or not scale:
        return value
    restored: np.ndarray = (value.astype(np.float32) - zero) * scale
    return restored.astype(np.float32)


class ExecuTorchPredictor:
    """A ``.pte`` program in ExecuTorch's runtime (its XNNPACK delegate where lowered)."""

    def __init__(self, model: EdgeModel, threads: int = 2) -> None:
        require("executorch", "executorch", "Running an ExecuTorch (.pte) program")
        from executorch.runtime import Runtime, Verification

        self.input_names, self.output_names = model.input_names, model.output_names
        try:
            # the method reads the program's memory: both live as long as the predictor
            self._data = model.data
            self._program = Runtime.get().load_program(
                self._data, verification=Verification.Minimal
            )
            self._method = self._program.load_method("forward")
        except Exception as exc:  # the runtime raises plain RuntimeErrors of its own
            raise ModelLoadError(f"ExecuTorch cannot load the program: {first_line(exc)}.") from exc
        meta = self._method.metadata
        self._rows = int(meta.input_tensor_meta(0).sizes()[0])
        self.input_dtypes = {n: "float32" for n in self.input_names}

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        arrays = [np.ascontiguousarray(inputs[n]) for n in self.input_names]
        rows, step = len(arrays[0]), self._rows
        parts = []
        for start in range(0, rows, step):
            # canonical strides: a size-1 axis may carry any stride, which XNNPACK refuses
            chunk = [torch.from_numpy(a[start : start + step].copy(order="C")) for a in arrays]
            if len(chunk[0]) < step:  # a short last slice: pad to the program's rows
                chunk = [_padded(c, step) for c in chunk]
            outs = self._method.execute(chunk)
            parts.append([o.numpy()[: rows - start] for o in outs])
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


def _padded(tensor: Any, rows: int) -> Any:
    import torch

    pad = torch.zeros((rows - len(tensor), *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, pad])


def edge_io(model: EdgeModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The device model's inputs and outputs as its runtime declares them (name, dtype,
    shape; -1: resizable)."""
    if model.format == "litert":
        predictor = LiteRtPredictor(model)
        rows = []
        for details, names in (
            (predictor._inputs, model.input_names),
            (predictor._outputs, model.output_names),
        ):
            rows.append(
                [
                    {
                        "name": name,
                        "dtype": np.dtype(d["dtype"]).name,
                        "shape": [int(v) for v in d["shape_signature"]],
                    }
                    for name, d in zip(names, details.values(), strict=False)
                ]
            )
        return rows[0], rows[1]
    meta = ExecuTorchPredictor(model)._method.metadata

    def row(name: str, info: Any) -> dict[str, Any]:
        dtype = SCALAR_TYPES.get(int(info.dtype()), str(info.dtype()))
        return {"name": name, "dtype": dtype, "shape": list(info.sizes())}

    inputs = [row(n, meta.input_tensor_meta(i)) for i, n in enumerate(model.input_names)]
    outputs = [row(n, meta.output_tensor_meta(i)) for i, n in enumerate(model.output_names)]
    return inputs, outputs


SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16"}
SCALAR_TYPES |= {6: "float32", 7: "float64", 11: "bool", 15: "bfloat16"}
"""ExecuTorch's ScalarType codes (c10's numbering) as numpy names."""


def litert_weights(model: EdgeModel) -> list[tuple[str, int, str, float]]:
    """Each constant tensor of a ``.tflite`` with more than one value: (name, values,
    dtype, share of zeros) — what ``inspect`` lists as its layers' weights."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model.data)
    interpreter.allocate_tensors()
    found = []
    inputs = {d["index"] for d in interpreter.get_input_details()}
    for detail in interpreter.get_tensor_details():
        if detail["index"] in inputs or int(np.prod(detail["shape"])) <= 16:
            continue
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation: no data until the model runs
            continue
        if not detail["name"] or value.size <= 16:
            continue
        zeros = float((value == 0).mean()) if value.dtype.kind == "f" else 0.0
        found.append((detail["name"], int(value.size), np.dtype(detail["dtype"]).name, zeros))
    return found
