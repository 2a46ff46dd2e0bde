"""ONNX Runtime quantization as one recipe step: dynamic int8 and calibrated static QDQ.

ORT's quantizer does the work; this module adds the recipe interface, the calibration
data plumbing, pre-processing and the checks that turn ORT's failures into fixes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from slimserve.context import Context
from slimserve.data import Dataset
from slimserve.errors import DataError, RecipeError, SlimserveError, first_line
from slimserve.models.onnx import OnnxModel

MIN_CALIBRATION_SAMPLES = 16


class CalibrationConfig(BaseModel):
    """How static quantization estimates activation ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="ORT calibrator: MinMax, Entropy or Percentile."
    )
    percentile: float = Field(
        99.999, gt=90, le=100, description="Percentile kept by the percentile method."
    )
    samples: int = Field(
        256, ge=MIN_CALIBRATION_SAMPLES, description="Calibration samples to use (at most)."
    )
    batch_size: int = Field(32, ge=1, description="Samples per calibration batch.")


class QuantizeConfig(BaseModel):
    """Quantize an ONNX model with ONNX Runtime's quantizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"

    mode: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: weights int8, activations at run time; static: QDQ."
    )
    weights: Literal["int8", "uint8"] = Field(
        "int8", description="Weight type. uint8 weights fall onto slow U8U8 kernels on x86."
    )
    activations: Literal["int8", "uint8"] = Field(
        "uint8", description="Static only: activation type (ORT advises uint8 on x86)."
    )
    per_channel: bool = Field(True, description="One scale per output channel of each weight.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")
    symmetric_activations: bool = Field(False, description="Static only: zero point 0.")
    op_types: tuple[str, ...] | None = Field(
        None, description="Operator types to quantize (default: all ORT supports)."
    )
    exclude: tuple[str, ...] = Field((), description="Node names kept in float.")
    preprocess: bool = Field(True, description="Shape inference + graph optimization first.")
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Static only: calibration settings."
    )

    def describe(self) -> str:
        """A short label for tables: 'quantize static int8', ..."""
        return f"quantize {self.mode} {self.weights}"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        calibration = ctx.split("calibration", "train") if self.mode == "static" else None
        return quantize_onnx(model, self, calibration, ctx.work_dir)


def quantize_onnx(
    model: OnnxModel,
    config: QuantizeConfig,
    calibration: Dataset | None = None,
    work_dir: Path | None = None,
) -> OnnxModel:
    """Quantize ``model`` as ``config`` says; static mode needs ``calibration`` data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    _check_exclusions(model, config.exclude)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        source: onnx.ModelProto | Path = model.proto
        if config.preprocess:
            source = _preprocess(model, Path(tmp) / "pre.onnx")
        output = Path(tmp) / "quantized.onnx"
        common: dict[str, Any] = {
            "per_channel": config.per_channel,
            "reduce_range": config.reduce_range,
            "weight_type": qtype[config.weights],
            "op_types_to_quantize": list(config.op_types) if config.op_types else None,
            "nodes_to_exclude": list(config.exclude),
        }
        with _quiet():
            if config.mode == "dynamic":
                quantize_dynamic(source, output, **common)
            else:
                if calibration is None:
                    raise DataError(
                        "Static quantization needs calibration data: add "
                        "data.calibration to the recipe (or pass calibration=...)."
                    )
                reader = _reader(model, calibration, config.calibration)
                quantize_static(
                    source,
                    output,
                    reader,
                    activation_type=qtype[config.activations],
                    calibrate_method=_method(config.calibration.method),
                    extra_options={
                        "ActivationSymmetric": config.symmetric_activations,
                        "CalibPercentile": config.calibration.percentile,
                    },
                    **common,
                )
        return OnnxModel(onnx.load(str(output)))


def _check_exclusions(model: OnnxModel, exclude: tuple[str, ...]) -> None:
    import difflib

    names = [n.name for n in model.proto.graph.node]
    for name in exclude:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RecipeError(
                f"quantize.exclude names node '{name}', which the model does not have.{hint} "
                "List node names with: slimserve inspect MODEL"
            )


def _preprocess(model: OnnxModel, path: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet():
        try:
            quant_pre_process(model.proto, path, skip_symbolic_shape=False)
        except Exception:
            # Symbolic shape inference fails on some exporter outputs; ONNX's own is enough.
            quant_pre_process(model.proto, path, skip_symbolic_shape=True)
    return path


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


class _BatchReader:
    """ORT's CalibrationDataReader protocol over a Dataset (duck-typed: get_next)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _reader(model: OnnxModel, data: Dataset, config: CalibrationConfig) -> _BatchReader:
    if len(data) < MIN_CALIBRATION_SAMPLES:
        raise DataError(
            f"Static quantization got {len(data)} calibration samples; it needs at least "
            f"{MIN_CALIBRATION_SAMPLES} to estimate activation ranges (256+ is better). "
            "Give a larger data.calibration split."
        )
    names = model.input_names
    if set(data.inputs) != set(names) and len(data.inputs) == len(names) == 1:
        data = data.renamed(names)
    if set(data.inputs) != set(names):
        raise DataError(
            f"Calibration data has arrays {list(data.inputs)} but the model's inputs are "
            f"{list(names)}. Name the calibration arrays after the model inputs."
        )
    data = data.take(min(config.samples, len(data)))
    batches = (
        {
            k: np.ascontiguousarray(v, dtype=np.float32) if v.dtype.kind == "f" else v
            for k, v in batch.inputs.items()
        }
        for batch in data.batches(config.batch_size)
    )
    return _BatchReader(batches)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs and prints progress; keep the user's terminal for our table."""
    sink = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink):
            yield
    except SlimserveError:
        raise
    except Exception as exc:
        detail = first_line(exc)
        raise SlimserveError(
            f"ONNX Runtime's quantizer failed: {detail}. Try excluding the node it names "
            "(quantize.exclude) or restricting quantize.op_types."
        ) from exc
    finally:
        root.setLevel(level)
