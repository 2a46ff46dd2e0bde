"""ONNX Runtime quantization: each mode runs in ORT and stays close to fp32."""

from __future__ import annotations

import numpy as np
import pytest

import slimserve as ss
from slimserve.evaluate import evaluate, predict_all


def quantized_ops(model: ss.OnnxModel) -> set[str]:
    return {n.op_type for n in model.proto.graph.node}


@pytest.fixture(scope="module")
def reference(digits_onnx, digits_test):  # type: ignore[no-untyped-def]
    return predict_all(ss.load_predictor(digits_onnx), digits_test)


def test_dynamic_int8(digits_onnx, digits_test, reference) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_onnx(digits_onnx, ss.QuantizeConfig(mode="dynamic"))
    assert {"DynamicQuantizeLinear"} & quantized_ops(quantized) or {
        "MatMulInteger",
        "ConvInteger",
    } & quantized_ops(quantized)
    metrics = evaluate(ss.load_predictor(quantized), digits_test, reference)
    assert metrics["cosine_mean"] > 0.995
    assert metrics["accuracy"] > 0.97
    assert len(quantized.to_bytes()) < 0.3 * len(digits_onnx.to_bytes())


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq(method: str, digits_onnx, digits_train, digits_test, reference) -> None:  # type: ignore[no-untyped-def]
    config = ss.QuantizeConfig(
        mode="static", calibration=ss.CalibrationConfig(method=method, samples=128)
    )
    quantized = ss.quantize_onnx(digits_onnx, config, digits_train)
    assert {"QuantizeLinear", "DequantizeLinear"} <= quantized_ops(quantized)
    metrics = evaluate(ss.load_predictor(quantized), digits_test, reference)
    assert metrics["cosine_mean"] > 0.99
    assert metrics["accuracy"] > 0.97


def test_excluded_node_stays_float(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    gemms = [n.name for n in digits_onnx.proto.graph.node if n.op_type == "Gemm"]
    last = gemms[-1]
    config = ss.QuantizeConfig(mode="static", exclude=(last,))
    quantized = ss.quantize_onnx(digits_onnx, config, digits_train)
    graph = quantized.proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == last)
    weight_producer = producers.get(node.input[1])
    assert weight_producer is None or weight_producer.op_type != "DequantizeLinear"
    others = [n for n in graph.node if n.name in gemms[:-1]]
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_unknown_excluded_node_is_an_error(digits_onnx) -> None:  # type: ignore[no-untyped-def]
    name = next(n.name for n in digits_onnx.proto.graph.node if n.op_type == "Gemm")
    with pytest.raises(ss.RecipeError, match=f"Did you mean '{name}'"):
        ss.quantize_onnx(digits_onnx, ss.QuantizeConfig(exclude=(name + "x",)))


def test_static_needs_calibration_data(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    config = ss.QuantizeConfig(mode="static")
    with pytest.raises(ss.DataError, match="needs calibration data"):
        ss.quantize_onnx(digits_onnx, config, None)
    with pytest.raises(ss.DataError, match="got 5 calibration samples; it needs at least 16"):
        ss.quantize_onnx(digits_onnx, config, digits_train.take(5))


def test_calibration_with_wrong_input_names(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    data = ss.Dataset(
        {"pixels": digits_train.inputs["input"], "extra": digits_train.inputs["input"]}
    )
    with pytest.raises(
        ss.DataError,
        match=r"Calibration data has arrays \['pixels', 'extra'\].*inputs are \['input'\]",
    ):
        ss.quantize_onnx(digits_onnx, ss.QuantizeConfig(mode="static"), data)


def test_too_few_samples_in_recipe_is_a_recipe_error() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 16"):
        ss.CalibrationConfig(samples=4)


def test_uint8_weights_still_run(digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_onnx(digits_onnx, ss.QuantizeConfig(mode="dynamic", weights="uint8"))
    (out,) = ss.load_predictor(quantized).predict({"input": digits_test.inputs["input"][:4]})
    assert out.shape == (4, 10) and np.isfinite(out).all()
