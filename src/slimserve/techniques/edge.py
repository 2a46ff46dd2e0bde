"""Export for devices (``export: {format: litert | executorch}``): a Keras 3 model to a
LiteRT ``.tflite`` by TensorFlow's own converter, float or post-training quantized
(float16, dynamic-range int8, full-integer int8 with the recipe's calibration split as
the representative dataset); any torch model to an ExecuTorch ``.pte``, ``torch.export``
-> PT2E int8 with the XNNPACK quantizer and calibration data -> XNNPACK-delegated program.

The LiteRT converter runs in a child process (``litert_convert.py``) on Keras' TensorFlow
backend: the Keras 3 file is backend-agnostic, and TensorFlow's converter is what a TF-MOT
user's workflow ends in. PyTorch models are not converted to LiteRT here: litert-torch's
converter pins typing-extensions < 4.13 (through xdsl 0.28), which slimserve's pydantic
cannot run with; they go to ExecuTorch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from slimserve.core.errors import ExportError, RecipeError, first_line, require
from slimserve.core.specs import tag_of
from slimserve.models.edge import EdgeModel
from slimserve.techniques.export import ExportConfig

if TYPE_CHECKING:
    from slimserve.core.context import Context
    from slimserve.models.torch import TorchModel


class LiteRtExportConfig(BaseModel):
    """Convert a Keras 3 model to LiteRT (.tflite) with TensorFlow's converter."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "export"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "litert"
    trains: ClassVar[bool] = False

    format: Literal["litert"] = Field("litert", description="A LiteRT flatbuffer (.tflite).")
    quantize: Literal["float", "float16", "dynamic_int8", "int8"] = Field(
        "float",
        description="float: no quantization; float16: float16 weights; dynamic_int8: int8 "
        "weights, activations quantized at run time; int8: full integer (int8 inputs, "
        "outputs and activations, calibrated on data.calibration, the representative "
        "dataset).",
    )
    calibration_samples: int = Field(
        256, ge=1, description="Rows of the calibration split the representative dataset yields."
    )

    def describe(self) -> str:
        return f"export litert {self.quantize}"

    def apply(self, model: TorchModel, ctx: Context) -> EdgeModel:
        from slimserve.models.keras import is_keras

        require("tensorflow", "litert", "Converting to LiteRT")
        if not is_keras(model.module):
            raise RecipeError(
                "format: litert converts a Keras 3 model (a .keras file) with TensorFlow's "
                "converter. A PyTorch model goes to devices as ExecuTorch (export: {format: "
                "executorch}); litert-torch, its LiteRT converter, cannot be installed beside "
                "slimserve (it pins typing-extensions < 4.13)."
            )
        calibration = _calibration_rows(model, ctx, self.calibration_samples, self.quantize)
        with tempfile.TemporaryDirectory(prefix="slimserve-litert-") as folder:
            source, target = Path(folder) / "model.keras", Path(folder) / "model.tflite"
            keras_model: Any = model.module.keras_model
            keras_model.save(source)
            command = [sys.executable, "-m", "slimserve.techniques.litert_convert"]
            command += [str(source), str(target), self.quantize]
            if calibration is not None:
                np.savez(Path(folder) / "calibration.npz", calibration)
                command.append(str(Path(folder) / "calibration.npz"))
            env = os.environ | {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0 or not target.is_file():
                tail = "\n".join(done.stderr.strip().splitlines()[-4:])
                raise ExportError(f"LiteRT's converter failed ({self.describe()}):\n{tail}")
            data = target.read_bytes()
        converted = EdgeModel(data, "litert", model.input_names, model.output_names, self.quantize)
        ctx.log.notes.append(_parity(model, converted))
        return converted


class ExecuTorchExportConfig(BaseModel):
    """Export a torch model to an ExecuTorch program (.pte), delegated to XNNPACK."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "export"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "executorch"
    trains: ClassVar[bool] = False

    format: Literal["executorch"] = Field(
        "executorch", description="An ExecuTorch program (.pte) with the XNNPACK delegate."
    )
    quantize: Literal["float", "int8"] = Field(
        "float",
        description="float, or int8 by PT2E with the XNNPACK quantizer (per-channel "
        "symmetric weights, activations calibrated on data.calibration).",
    )
    calibration_samples: int = Field(
        256, ge=1, description="Rows of the calibration split the int8 observers see."
    )

    def describe(self) -> str:
        return f"export executorch {self.quantize}"

    def apply(self, model: TorchModel, ctx: Context) -> EdgeModel:
        require("executorch", "executorch", "Exporting to ExecuTorch")
        import torch

        if model.example_inputs is None:
            raise ExportError("An ExecuTorch program needs example inputs; the model has none.")
        # a device runs one row at a time; canonical strides (see runtime/edge.py)
        row = tuple(
            torch.zeros_like(x[:1], memory_format=torch.contiguous_format).copy_(x[:1])
            for x in model.example_inputs
        )
        calibration = _calibration_rows(model, ctx, self.calibration_samples, self.quantize)
        module = model.module.eval()
        try:
            with torch.no_grad():
                if self.quantize == "int8":
                    module = _pt2e_int8(module, row, calibration)
                data = _lowered(module, row)
        except Exception as exc:
            raise ExportError(
                f"ExecuTorch could not export the model ({self.describe()}): {first_line(exc)}."
            ) from exc
        converted = EdgeModel(
            data, "executorch", model.input_names, model.output_names, self.quantize
        )
        ctx.log.notes.append(_parity(model, converted))
        return converted


format_of = tag_of("format", "onnx")
"""The export union's discriminator: the ``format`` key, ``onnx`` when left out."""


ExportStepConfig = Annotated[
    Annotated[ExportConfig, Tag("onnx")]
    | Annotated[LiteRtExportConfig, Tag("litert")]
    | Annotated[ExecuTorchExportConfig, Tag("executorch")],
    Discriminator(format_of),
]
"""The export step: ONNX (served), or a device format."""


def _pt2e_int8(module: Any, row: tuple[Any, ...], calibration: np.ndarray | None) -> Any:
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    assert calibration is not None
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = prepare_pt2e(torch.export.export(module, row).module(), quantizer)
    for sample in calibration:
        prepared(torch.from_numpy(sample[None]))
    return convert_pt2e(prepared)


def _lowered(module: Any, row: tuple[Any, ...]) -> bytes:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, row)
    # Keras' torch convolutions copy into channels_last around the kernel; the copy stays
    # outside the delegate, and ExecuTorch 1.5's portable clone rejects that dim order at
    # run time. Memory format is layout only: a contiguous copy computes the same.
    for node in program.graph.nodes:
        if node.kwargs.get("memory_format") == torch.channels_last:
            node.kwargs = {**node.kwargs, "memory_format": torch.contiguous_format}
    program.graph_module.recompile()
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return bytes(lowered.to_executorch().buffer)


def _calibration_rows(
    model: TorchModel, ctx: Context, samples: int, mode: str
) -> np.ndarray | None:
    """The first input's rows of data.calibration (data.train if none), for int8 modes."""
    if mode != "int8":
        return None
    split = ctx.split("calibration", "train")
    if split is None:
        raise RecipeError(
            "Full-integer int8 needs calibration data (the representative dataset): add "
            "data.calibration to the recipe, or use quantize: dynamic_int8 (LiteRT), which "
            "needs none."
        )
    if len(model.input_names) != 1:
        raise RecipeError("int8 device export takes a model with one input.")
    data = split.renamed(model.input_names).take(samples)
    return np.asarray(data.inputs[model.input_names[0]], dtype=np.float32)


def _parity(model: TorchModel, converted: EdgeModel) -> str:
    """How far the device model's outputs are from the torch model's on the example rows."""
    import torch

    from slimserve.runtime.edge import edge_predictor

    assert model.example_inputs is not None
    with torch.no_grad():
        expected = model.module(*model.example_inputs)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    feeds = {n: x.numpy() for n, x in zip(model.input_names, model.example_inputs, strict=True)}
    got = edge_predictor(converted).predict(feeds)[0]
    error = float(np.abs(got - expected.numpy()).max())
    return (
        f"{converted.format} {converted.precision}: {len(converted.data):,} bytes; largest "
        f"output difference from the PyTorch model on {len(got)} example rows {error:.2e}."
    )
