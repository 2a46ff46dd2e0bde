"""Sensitivity ranking and fallback on a deliberately broken model (an outlier neuron)."""

from __future__ import annotations

import copy

import pytest
import torch

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.measure.evaluate import evaluate


@pytest.fixture(scope="module")
def outlier(digits_torch) -> tuple[ss.TorchModel, ss.OnnxModel]:  # type: ignore[no-untyped-def]
    """The same function, but one fc1 neuron 1000x larger (and fc_out 1000x smaller on
    it): per-tensor int8 activations lose every other neuron to the outlier's range."""
    broken = copy.deepcopy(digits_torch)
    with torch.no_grad():
        broken.module.fc1.weight[3] *= 1000
        broken.module.fc1.bias[3] *= 1000
        broken.module.fc_out.weight[:, 3] /= 1000
    return broken, ss.ExportConfig().apply(broken, ss.Context())


def accuracy(model, data) -> float:  # type: ignore[no-untyped-def]
    return evaluate(ss.load_predictor(model), data)["accuracy"]


def test_outlier_breaks_static_int8(outlier, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    _, onnx_model = outlier
    assert accuracy(onnx_model, digits_test) > 0.97
    quantized = ss.quantize_onnx(onnx_model, ss.StaticQuantizeConfig(), digits_train)
    assert accuracy(quantized, digits_test) < 0.5


def test_fallback_recovers_within_the_goal(outlier, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    torch_model, onnx_model = outlier
    log = StepLog()
    ctx = ss.Context(
        data={"calibration": digits_train, "eval": digits_test},
        reference=torch_model,
        log=log,
        max_drop=0.01,
    )
    quantized = ss.StaticQuantizeConfig(fallback="auto").apply(onnx_model, ctx)
    assert accuracy(quantized, digits_test) >= accuracy(onnx_model, digits_test) - 0.01
    ranking = [row["node"] for row in log.details["sensitivity"]]
    gemms = [n.name for n in onnx_model.proto.graph.node if n.op_type == "Gemm"]
    assert set(ranking[:2]) == set(gemms)  # the layers around the outlier come first
    assert set(log.details["float_nodes"]) == set(gemms)
    assert "Fallback: kept 2 of 4" in log.notes[0]
    kept_float = [n for n in quantized.proto.graph.node if n.name in gemms]
    producers = {o: n.op_type for n in quantized.proto.graph.node for o in n.output}
    assert kept_float  # all() of nothing would pass
    assert all(producers.get(n.input[1]) != "DequantizeLinear" for n in kept_float)


def test_fallback_does_nothing_when_the_goal_is_met(
    digits_torch, digits_onnx, digits_train, digits_test
) -> None:  # type: ignore[no-untyped-def]
    log = StepLog()
    ctx = ss.Context(
        data={"calibration": digits_train, "eval": digits_test}, reference=digits_torch, log=log
    )
    ss.StaticQuantizeConfig(fallback="auto").apply(digits_onnx, ctx)
    assert log.details["float_nodes"] == [] and "sensitivity" not in log.details


def test_fallback_needs_eval_data(digits_onnx, digits_train) -> None:  # type: ignore[no-untyped-def]
    ctx = ss.Context(data={"calibration": digits_train})
    del ctx.data["calibration"]  # no split at all: nothing to measure the drop on
    with pytest.raises(ss.DataError, match="needs eval data"):
        ss.StaticQuantizeConfig(fallback="auto").apply(digits_onnx, ctx)


def test_fallback_with_per_token_scales(outlier, digits_test) -> None:  # type: ignore[no-untyped-def]
    """Per-token scales do not help an outlier *channel* (it is in every row); the
    fallback finds and keeps the layer that reads it in float, by its original name."""
    torch_model, onnx_model = outlier
    log = StepLog()
    ctx = ss.Context(data={"eval": digits_test}, reference=torch_model, log=log, max_drop=0.01)
    config = ss.DynamicQuantizeConfig(activation_scales="token", fallback="auto")
    quantized = config.apply(onnx_model, ctx)
    assert accuracy(quantized, digits_test) >= accuracy(onnx_model, digits_test) - 0.01
    assert log.details["attempts"][0]["metric"] < 0.5  # fully quantized, it was broken
    gemms = [n.name for n in onnx_model.proto.graph.node if n.op_type == "Gemm"]
    assert gemms[-1] in log.details["float_nodes"]  # fc_out reads the outlier
    rewritten = {
        n.name.split("/per_token/")[0]
        for n in quantized.proto.graph.node
        if n.op_type == "MatMulIntegerToFloat"
    }
    assert rewritten and not rewritten & set(log.details["float_nodes"])
