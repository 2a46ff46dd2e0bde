"""Static int8 by NNCF (extra ``[openvino]``): ``nncf.quantize`` on the ONNX model, the
ONNX backend, giving QDQ ONNX that ONNX Runtime and OpenVINO both run.

NNCF is what OpenVINO's own toolchain (and sentence-transformers' OpenVINO export) uses;
with ``model_type=TRANSFORMER`` it keeps the ops that suffer in int8 (softmax inputs,
layer norms) in float, applies SmoothQuant (outlier activations moved into the next
weights, alpha 0.95 for MatMuls unless told) and corrects biases. slimserve feeds it the
recipe's calibration split one sample at a time, each text sample cut to its own tokens
(padding would skew the activation ranges).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.errors import DataError, ExportError, SlimserveError, first_line, require
from slimserve.models.onnx import OnnxModel

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.techniques.quantize.configs import NncfQuantizeConfig


def quantize_nncf(model: OnnxModel, config: NncfQuantizeConfig, data: Dataset) -> OnnxModel:
    """``model`` quantized by NNCF on ``data`` (the calibration split)."""
    nncf: Any = require("nncf", "openvino", "NNCF quantization (quantize mode nncf)")
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    from slimserve.techniques.quantize.exclude import resolve_exclusions

    samples = calibration_samples(data, model.input_names)
    if not samples:
        raise DataError("quantize mode nncf needs calibration data: the split is empty.")
    exclude = resolve_exclusions(model, config.exclude)
    advanced = AdvancedQuantizationParameters()
    if config.smooth_quant_alpha is not None:
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth_quant_alpha)
        )
    try:
        quantized = nncf.quantize(
            model.proto,
            nncf.Dataset(samples),
            preset=nncf.QuantizationPreset(config.preset),
            subset_size=min(config.subset_size, len(samples)),
            fast_bias_correction=config.fast_bias_correction,
            model_type=nncf.ModelType.TRANSFORMER if config.model_type == "transformer" else None,
            ignored_scope=nncf.IgnoredScope(names=list(exclude)) if exclude else None,
            advanced_parameters=advanced,
        )
    except Exception as exc:  # NNCF's own failures (a graph its passes mis-handle)
        if isinstance(exc, SlimserveError):
            raise
        raise ExportError(
            f"NNCF could not quantize this model: {type(exc).__name__}: "
            f"{first_line(exc).rstrip('.')}. "
            "Try its defaults (fast_bias_correction: true, no smooth_quant_alpha), exclude "
            "the node it names, or use quantize mode static/dynamic."
        ) from exc
    return OnnxModel(quantized)


def smooth_quant(model: OnnxModel, data: Dataset, alpha: float) -> OnnxModel:
    """``model`` after NNCF's SmoothQuant alone (no quantization): per input channel of
    each MatMul, activations are divided by ``s = max|x|^alpha / max|w|^(1-alpha)`` (a
    Mul NNCF inserts before it) and the weight rows multiplied by ``s``. The float
    function is unchanged; its activations have smaller outliers for per-tensor int8."""
    require("nncf", "openvino", "SmoothQuant (quantize smooth_quant_alpha)")
    import nncf
    from nncf.common.factory import build_graph
    from nncf.quantization.algorithms.pipeline import collect_statistics
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant

    samples = calibration_samples(data, model.input_names)
    if not samples:
        raise DataError("SmoothQuant needs calibration data: the split is empty.")
    proto = model.proto
    graph = build_graph(proto)
    algorithm = SmoothQuant(subset_size=len(samples), alpha_map={"matmul": alpha})
    points = algorithm.get_statistic_points(proto, graph)
    statistics = collect_statistics(points, proto, graph, nncf.Dataset(samples))
    return OnnxModel(algorithm.apply(proto, graph, statistics))


def calibration_samples(data: Dataset, names: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """One feed dict per sample, in the model's input names; text (an ``attention_mask``
    input) cut to the sample's own tokens."""
    from slimserve.data import padded_width

    inputs = data.renamed(names).inputs
    mask = inputs.get("attention_mask")
    samples = []
    for i in range(len(data)):
        sample = {k: np.ascontiguousarray(v[i : i + 1]) for k, v in inputs.items()}
        if mask is not None:
            width = padded_width(mask[i : i + 1])
            sample = {
                k: v[:, :width] if v.shape == (1, mask.shape[1]) else v for k, v in sample.items()
            }
        samples.append({n: sample[n] for n in names})
    return samples
