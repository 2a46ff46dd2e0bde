"""A torch program next to the ONNX model: ``torch.export`` in float32 or bfloat16.

On CPUs with AVX512-BF16 or AMX, PyTorch's bf16 kernels can beat ONNX Runtime; elsewhere
bf16 is emulated and slow. So the pipeline can carry a ``torch.export`` program in the
artifact (``model.pt2``), measure it against the ONNX model in the same interleaved run,
and serve whichever is faster within the recipe's goal (``manifest.runtime``).
"""

from __future__ import annotations

import copy
import io
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimserve.core.errors import ExportError, first_line
from slimserve.models.torch import TorchModel

TorchDtype = Literal["auto", "float32", "bfloat16"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class RuntimeChoice(BaseModel):
    """Which runtimes the artifact may be served with; with both, the faster one within
    the goal is kept, timed at the largest bench batch size in the same run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    candidates: tuple[Literal["onnx", "torch", "openvino"], ...] = Field(
        ("onnx",),
        description="onnx (the ONNX model, in ONNX Runtime), torch (a torch.export program "
        "of the last PyTorch stage, before export, stored as model.pt2) and/or openvino "
        "(the same ONNX model in OpenVINO; extra [openvino]).",
    )
    openvino_precision: Literal["auto", "f32"] = Field(
        "auto",
        description="OpenVINO's precision for float layers: auto = its default (bf16 where "
        "the CPU has AVX512-BF16 or AMX), f32 = float32 throughout.",
    )
    torch_dtype: TorchDtype = Field(
        "auto",
        description="dtype of the torch program: auto = bfloat16 where the CPU has "
        "AVX512-BF16 or AMX, float32 elsewhere (bf16 is emulated and slow there).",
    )

    @model_validator(mode="after")
    def _check(self) -> RuntimeChoice:
        if not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates: one or more of onnx, torch, openvino, each once")
        return self


def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native bf16 features (AVX512-BF16, AMX-BF16), from the one probe."""
    from slimserve.core.cpu import FAST_KERNELS, cpu_features

    features = cpu_features()
    return tuple(f for f in FAST_KERNELS["bfloat16"] if f in features)


def resolve_dtype(requested: TorchDtype) -> tuple[torch.dtype, str | None]:
    """(dtype, a note when bf16 will be emulated) for the requested dtype."""
    if requested == "auto":
        return (torch.bfloat16 if cpu_bf16_flags() else torch.float32), None
    dtype = _DTYPES[requested]
    if dtype == torch.bfloat16 and not cpu_bf16_flags():
        return dtype, (
            "This CPU has no AVX512-BF16 or AMX, so the bf16 torch program runs emulated "
            "kernels (expect it to be slower than float32); torch_dtype: auto picks float32 "
            "here."
        )
    return dtype, None


class CastIO(torch.nn.Module):
    """Runs ``module`` in ``dtype``: float inputs are cast in, outputs are float32 out."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = module
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> Any:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        out = self.inner(*cast)
        if isinstance(out, torch.Tensor):
            return out.float()
        return tuple(o.float() for o in out)


def export_program(model: TorchModel, dtype: torch.dtype) -> tuple[TorchModel, bytes]:
    """``torch.export`` the model (batch and other declared axes dynamic) in ``dtype``.

    Returns the program as a TorchModel (what the runtime runs) and as ``.pt2`` bytes.
    """
    if model.example_inputs is None:
        raise ExportError("A torch program needs example inputs; the model has none.")
    module = copy.deepcopy(model.module).eval()
    if dtype != torch.float32:
        module = module.to(dtype)
    wrapped = CastIO(module, dtype).eval()
    axes = {n: {0: "batch"} for n in model.input_names} | (model.dynamic_axes or {})
    # forward(*inputs): the varargs are one argument, so their shapes are one tuple
    shapes = (tuple(dict.fromkeys(axes[n], torch.export.Dim.AUTO) for n in model.input_names),)
    try:
        with torch.no_grad():
            program = torch.export.export(wrapped, model.example_inputs, dynamic_shapes=shapes)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
    except Exception as exc:
        raise ExportError(
            f"torch.export could not capture the model for a torch program: "
            f"{first_line(exc)}. Serve the ONNX model (runtimes: {{candidates: [onnx]}})."
        ) from exc
    runnable = TorchModel(
        program.module(), model.example_inputs, model.input_names, model.output_names
    )
    return runnable, buffer.getvalue()
