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

from slimserve.core.errors import DataError, require
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

    samples = calibration_samples(data, model.input_names)
    if not samples:
        raise DataError("quantize mode nncf needs calibration data: the split is empty.")
    advanced = AdvancedQuantizationParameters()
    if config.smooth_quant_alpha is not None:
        advanced = AdvancedQuantizationParameters(
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=config.smooth_quant_alpha)
        )
    quantized = nncf.quantize(
        model.proto,
        nncf.Dataset(samples),
        preset=nncf.QuantizationPreset(config.preset),
        subset_size=min(config.subset_size, len(samples)),
        fast_bias_correction=config.fast_bias_correction,
        model_type=nncf.ModelType.TRANSFORMER if config.model_type == "transformer" else None,
        ignored_scope=nncf.IgnoredScope(names=list(config.exclude)) if config.exclude else None,
        advanced_parameters=advanced,
    )
    return OnnxModel(quantized)


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
