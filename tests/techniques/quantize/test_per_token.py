"""Dynamic int8 with per-token activation scales (quantize/per_token.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from pydantic import ValidationError
from torch import nn

import slimserve as ss
from slimserve.measure.evaluate import evaluate
from slimserve.runtime import OrtPredictor, predict_all
from slimserve.techniques.quantize.per_token import FOLD_DEQUANTIZE

TOKEN = ss.DynamicQuantizeConfig(activation_scales="token")
TENSOR = ss.DynamicQuantizeConfig()


def export(module: nn.Module, features: int) -> ss.OnnxModel:
    torch.manual_seed(0)
    example = (torch.zeros(1, features),)
    return ss.ExportConfig().apply(ss.TorchModel(module.eval(), example), ss.Context())


def run(model: ss.OnnxModel, x: np.ndarray) -> np.ndarray:
    return OrtPredictor(model).predict({"input": x})[0]


def row_errors(reference: np.ndarray, got: np.ndarray) -> np.ndarray:
    return np.abs(got - reference).max(axis=1) / np.abs(reference).max(axis=1)


def test_every_row_keeps_its_precision_whatever_the_others_size() -> None:
    torch.manual_seed(0)
    model = export(nn.Linear(64, 32), 64)
    rng = np.random.default_rng(0)
    # Rows a thousand times apart: one scale for the tensor crushes the small ones. (With
    # 8-bit uint8 activations, AVX2's saturating int16 pairs also broke the large ones.)
    x = (rng.standard_normal((8, 64)) * np.logspace(-3, 0, 8)[:, None]).astype(np.float32)
    reference = run(model, x)
    per_token = row_errors(reference, run(ss.quantize_onnx(model, TOKEN), x))
    per_tensor = row_errors(reference, run(ss.quantize_onnx(model, TENSOR), x))
    # The property, on every CPU kind: each row within the bound, and the worst row no
    # worse than with one scale per tensor. (How much worse per-tensor is depends on the
    # ISA: AVX2's saturating int16 pairs made it > 0.3 here, VNNI 0.06.)
    assert per_token.max() < 0.03, per_token
    assert per_token.max() < per_tensor.max(), (per_token, per_tensor)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.GELU()], ids=["relu", "gelu"])
def test_inputs_that_cannot_go_negative_use_all_levels(activation: nn.Module) -> None:
    torch.manual_seed(0)
    model = export(nn.Sequential(nn.Linear(32, 64), activation, nn.Linear(64, 16)), 32)
    quantized = ss.quantize_onnx(model, TOKEN)
    graph = quantized.proto.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantizers) == 2
    # The second Linear's input comes after the activation: [0, max] on all 128 levels
    # (7 bits, see the module), the first one's is symmetric around zero point 64.
    steps = sorted(float(constants[n.input[1]]) for n in quantizers)
    assert steps == pytest.approx([1 / 127, 1 / 63])
    after_activation = next(n for n in quantizers if float(constants[n.input[1]]) < 1 / 100)
    assert int(constants[after_activation.input[2]]) == 0
    source = producers[producers[after_activation.input[0]].input[0]]
    assert source.op_type in {"Relu", "Gelu", "Add"}  # Add: GELU's shift by 0.17
    x = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    reference = run(model, x)
    # The shift's constant part must come back out exactly (folded into the bias):
    # without it every row would be off by 0.17 x the weights' column sums (~20 %).
    errors = row_errors(reference, run(quantized, x))
    assert errors.max() < 0.06 and errors.mean() < 0.02, errors


def test_gelu_shift_without_a_bias_to_fold_into() -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16, bias=False))
    model = export(layers, 32)
    quantized = ss.quantize_onnx(model, TOKEN)
    names = [n.name for n in quantized.proto.graph.node]
    assert len(names) == len(set(names))
    x = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    errors = row_errors(run(model, x), run(quantized, x))
    assert errors.max() < 0.06 and errors.mean() < 0.02, errors


def test_digits_cnn_keeps_its_accuracy(digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_onnx(digits_onnx, TOKEN)
    ops = {n.op_type for n in quantized.proto.graph.node}
    assert "MatMulIntegerToFloat" in ops  # the classifier's Gemms, by the rewrite
    assert "ConvInteger" in ops  # convolutions, by ORT's dynamic quantizer
    reference = predict_all(ss.load_predictor(digits_onnx), digits_test)
    metrics = evaluate(ss.load_predictor(quantized), digits_test, reference)
    assert metrics["accuracy"] > 0.97
    assert metrics["cosine_mean"] > 0.995
    assert len(quantized.to_bytes()) < 0.3 * len(digits_onnx.to_bytes())


def test_excluded_matmul_stays_float() -> None:
    torch.manual_seed(0)
    model = export(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), 16)
    names = [n.name for n in model.proto.graph.node if n.op_type in {"Gemm", "MatMul"}]
    config = TOKEN.model_copy(update={"exclude": (names[-1],)})
    quantized = ss.quantize_onnx(model, config)
    assert sum(n.op_type == "MatMulIntegerToFloat" for n in quantized.proto.graph.node) == 1
    # ORT's pre-processing may rename it (or fuse its bias back into a Gemm).
    (kept,) = [n for n in quantized.proto.graph.node if n.op_type in {"Gemm", "MatMul"}]
    weights = {i.name: i for i in quantized.proto.graph.initializer}
    assert weights[kept.input[1]].data_type == onnx.TensorProto.FLOAT
    assert tuple(weights[kept.input[1]].dims) in {(16, 4), (4, 16)}


def test_options_that_contradict_it_are_refused() -> None:
    with pytest.raises(ValidationError, match="applies to mode dynamic"):
        ss.StaticQuantizeConfig(activation_scales="token")
    with pytest.raises(ValidationError, match="remove weights: uint8 and reduce_range"):
        ss.DynamicQuantizeConfig(activation_scales="token", weights="uint8")
    with pytest.raises(ValidationError, match="remove weights: uint8 and reduce_range"):
        ss.DynamicQuantizeConfig(activation_scales="token", reduce_range=True)


def test_static_qdq_models_are_not_marked_for_folding(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    from slimserve.techniques.quantize.per_token import mark_fold_dequantize

    static = ss.quantize_onnx(digits_onnx, ss.StaticQuantizeConfig(), digits_train)
    proto = static.proto
    mark_fold_dequantize(proto)
    assert FOLD_DEQUANTIZE not in {p.key for p in proto.metadata_props}
    assert not folds_dequantize(OrtPredictor(static))


def folds_dequantize(predictor: OrtPredictor) -> bool:
    options = predictor.session.get_session_options()
    try:
        return options.get_session_config_entry("session.disable_quant_qdq") == "1"
    except RuntimeError:  # ORT raises for a key that was never set
        return False
