"""ONNX Runtime quantization: each mode runs in ORT and stays close to fp32."""

from __future__ import annotations

import numpy as np
import pytest

import slimserve as ss
from slimserve.measure.evaluate import evaluate
from slimserve.runtime import predict_all


def quantized_ops(model: ss.OnnxModel) -> set[str]:
    return {n.op_type for n in model.proto.graph.node}


@pytest.fixture(scope="module")
def reference(digits_onnx, digits_test):  # type: ignore[no-untyped-def]
    return predict_all(ss.load_predictor(digits_onnx), digits_test)


def test_dynamic_int8(digits_onnx, digits_test, reference) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_onnx(digits_onnx, ss.DynamicQuantizeConfig())
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
    config = ss.StaticQuantizeConfig(calibration=ss.CalibrationConfig(method=method, samples=128))
    quantized = ss.quantize_onnx(digits_onnx, config, digits_train)
    assert {"QuantizeLinear", "DequantizeLinear"} <= quantized_ops(quantized)
    metrics = evaluate(ss.load_predictor(quantized), digits_test, reference)
    assert metrics["cosine_mean"] > 0.99
    assert metrics["accuracy"] > 0.97


def test_excluded_node_stays_float(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    gemms = [n.name for n in digits_onnx.proto.graph.node if n.op_type == "Gemm"]
    last = gemms[-1]
    config = ss.StaticQuantizeConfig(exclude=(last,))
    quantized = ss.quantize_onnx(digits_onnx, config, digits_train)
    graph = quantized.proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == last)
    weight_producer = producers.get(node.input[1])
    assert weight_producer is None or weight_producer.op_type != "DequantizeLinear"
    others = [n for n in graph.node if n.name in gemms[:-1]]
    assert others  # all() of nothing would pass
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)


def test_unknown_excluded_node_is_an_error(digits_onnx) -> None:  # type: ignore[no-untyped-def]
    name = next(n.name for n in digits_onnx.proto.graph.node if n.op_type == "Gemm")
    with pytest.raises(ss.RecipeError, match=f"Did you mean '{name}'"):
        ss.quantize_onnx(digits_onnx, ss.DynamicQuantizeConfig(exclude=(name + "x",)))


def test_a_module_name_excludes_the_nodes_exported_from_it(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    # the model's last Linear is the module 'fc_out' (its ONNX node: 'node_linear_1')
    def static(*exclude: str) -> ss.OnnxModel:
        config = ss.StaticQuantizeConfig(exclude=exclude)
        return ss.quantize_onnx(digits_onnx, config, digits_train.take(64))

    gemms = [n.name for n in digits_onnx.proto.graph.node if n.op_type == "Gemm"]
    by_module, by_node, everything = static("fc_out"), static(gemms[-1]), static()
    ops = [[n.op_type for n in m.proto.graph.node] for m in (by_module, by_node, everything)]
    assert ops[0] == ops[1] != ops[2]  # the same node stayed float
    with pytest.raises(ss.RecipeError, match=r"neither a node nor a module.*'fc_out'"):
        ss.quantize_onnx(digits_onnx, ss.DynamicQuantizeConfig(exclude=("fc_outt",)))


def test_static_needs_calibration_data(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    config = ss.StaticQuantizeConfig()
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
        ss.quantize_onnx(digits_onnx, ss.StaticQuantizeConfig(), data)


def test_too_few_samples_in_recipe_is_a_recipe_error() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 16"):
        ss.CalibrationConfig(samples=4)


def test_uint8_weights_still_run(digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_onnx(digits_onnx, ss.DynamicQuantizeConfig(weights="uint8"))
    (out,) = ss.load_predictor(quantized).predict({"input": digits_test.inputs["input"][:4]})
    assert out.shape == (4, 10) and np.isfinite(out).all()


def test_weight_only_int4_on_linear_layers(digits_onnx, digits_test, reference) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_onnx(digits_onnx, ss.WeightOnlyQuantizeConfig(block_size=32))
    assert "MatMulNBits" in quantized_ops(quantized)
    assert "Gemm" not in quantized_ops(quantized)  # both Linear layers went 4-bit
    metrics = evaluate(ss.load_predictor(quantized), digits_test, reference)
    assert metrics["cosine_mean"] > 0.99 and metrics["accuracy"] > 0.97


def test_weight_only_without_linear_layers_is_an_error() -> None:
    import torch

    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    model = ss.ExportConfig().apply(ss.TorchModel(conv, (torch.rand(2, 1, 8, 8),)), ss.Context())
    with pytest.raises(ss.RecipeError, match="no MatMul/Gemm with constant weights"):
        ss.quantize_onnx(model, ss.WeightOnlyQuantizeConfig())


def test_gemm_to_matmul_keeps_outputs(digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    from slimserve.techniques.quantize.ort import gemm_to_matmul

    rewritten = ss.OnnxModel(gemm_to_matmul(digits_onnx.proto))
    assert "Gemm" not in quantized_ops(rewritten)
    x = {"input": digits_test.inputs["input"][:16]}
    (a,) = ss.load_predictor(digits_onnx).predict(x)
    (b,) = ss.load_predictor(rewritten).predict(x)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_fp16(keep_io_types: bool, digits_onnx, digits_test, reference) -> None:  # type: ignore[no-untyped-def]
    from slimserve.models.onnx import describe_io

    converted = ss.quantize_onnx(digits_onnx, ss.Fp16QuantizeConfig(keep_io_types=keep_io_types))
    io = describe_io(converted.proto)
    assert io["inputs"][0]["dtype"] == ("float32" if keep_io_types else "float16")
    assert len(converted.to_bytes()) < 0.55 * len(digits_onnx.to_bytes())
    metrics = evaluate(ss.load_predictor(converted), digits_test, reference)
    assert metrics["cosine_min"] > 0.999


def test_options_of_another_mode_are_refused() -> None:
    with pytest.raises(ValueError, match="'block_size' applies to mode weight_only, not static"):
        ss.StaticQuantizeConfig(block_size=64)
    with pytest.raises(ValueError, match="'calibration' applies to mode static, not dynamic"):
        ss.DynamicQuantizeConfig(calibration=ss.CalibrationConfig(method="entropy"))
    with pytest.raises(ValueError, match="power of two"):
        ss.WeightOnlyQuantizeConfig(block_size=48)


def test_quantize_function_exports_a_torch_model(digits_torch, digits_test) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize(digits_torch)
    assert "DynamicQuantizeLinear" in quantized_ops(quantized)
    with pytest.raises(ss.RecipeError, match="takes a TorchModel or OnnxModel"):
        ss.quantize("model.onnx")  # type: ignore[arg-type]


def test_debug_metadata_is_dropped(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    assert any(n.metadata_props for n in digits_onnx.proto.graph.node)
    quantized = ss.quantize_onnx(digits_onnx, ss.StaticQuantizeConfig(), digits_train)
    assert not any(n.metadata_props for n in quantized.proto.graph.node)
    assert len(quantized.to_bytes()) <= 0.27 * len(digits_onnx.to_bytes())


def test_module_names_of_a_hugging_face_export_are_found(tiny_bert) -> None:  # type: ignore[no-untyped-def]
    from slimserve.techniques.quantize.exclude import resolve_exclusions

    model = ss.load_model(tiny_bert)
    onnx_model = ss.ExportConfig().apply(model, ss.Context())  # TorchScript: /a/b/Op names
    nodes = resolve_exclusions(onnx_model, ("model.encoder.layer.0.attention.self.query",))
    assert nodes and all("/layer.0/attention/self/query/" in n for n in nodes)
