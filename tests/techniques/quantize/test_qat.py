"""QAT: fake-quant training in torch, int8 QDQ in ORT that carries the learned ranges."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.measure.evaluate import evaluate
from slimserve.techniques.quantize.qat import attach


@pytest.fixture(scope="module")
def qat_result(digits_torch, digits_train, digits_test):  # type: ignore[no-untyped-def]
    log = StepLog()
    ctx = ss.Context(
        data={"train": digits_train, "calibration": digits_train, "eval": digits_test},
        reference=digits_torch,
        log=log,
    )
    config = ss.QATConfig.model_validate({"finetune": {"epochs": 2, "lr": 1e-4}})
    return config.apply(copy.deepcopy(digits_torch), ctx), log


def test_qat_exports_qdq_that_runs_as_int8(qat_result, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _ = qat_result
    ops = {n.op_type for n in model.proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.to_bytes(), options, providers=["CPUExecutionProvider"])
    optimized = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= optimized


def test_qat_carries_the_learned_ranges(qat_result) -> None:  # type: ignore[no-untyped-def]
    model, log = qat_result
    low, high = log.details["learned_ranges"]["fc_out"]
    graph = model.proto.graph
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    gemm = [n for n in graph.node if n.op_type == "Gemm"][-1]
    dq = next(n for n in graph.node if gemm.input[0] in n.output)
    scale = float(values[dq.input[1]])
    assert scale == pytest.approx((max(high, 0) - min(low, 0)) / 255, rel=1e-5)


def test_qat_accuracy_at_least_static_ptq(
    qat_result, digits_onnx, digits_train, digits_test
) -> None:  # type: ignore[no-untyped-def]
    model, _ = qat_result
    ptq = ss.quantize_onnx(digits_onnx, ss.StaticQuantizeConfig(), digits_train)
    qat_acc = evaluate(ss.load_predictor(model), digits_test)["accuracy"]
    ptq_acc = evaluate(ss.load_predictor(ptq), digits_test)["accuracy"]
    assert qat_acc >= ptq_acc - 0.005  # one image of 450, at most


def test_qat_keeps_pruning_zeros(digits_torch) -> None:  # type: ignore[no-untyped-def]
    module = copy.deepcopy(digits_torch.module)
    with torch.no_grad():
        module.fc1.weight[:, ::2] = 0
    state = attach(module)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    module.train()
    loss = module(torch.rand(8, 1, 8, 8)).square().mean()
    loss.backward()
    optimizer.step()
    plain = state.finalize()
    assert isinstance(plain.fc1, torch.nn.Linear)
    assert (plain.fc1.weight[:, ::2] == 0).all()
    assert (plain.fc1.weight[:, 1::2] != 0).float().mean() > 0.99


def test_qat_recipe_step_replaces_export(tmp_path) -> None:  # type: ignore[no-untyped-def]
    recipe = ss.parse_recipe(
        {
            "name": "qat",
            "model": {"example": "digits"},
            "data": {
                "train": {"example": "digits", "split": "train", "samples": 256},
                "eval": {"example": "digits", "split": "test", "samples": 128},
            },
            "steps": [{"qat": {"finetune": {"epochs": 1}}}],
            "bench": {"batch_sizes": [1], "warmup": 1, "repeats": 3},
        }
    )
    result = ss.run_recipe(recipe, tmp_path)
    assert [s.name for s in result.stages] == ["baseline", "qat int8"]
    assert result.stages[-1].metrics["accuracy"] > 0.9
    assert np.isfinite(result.stages[-1].metrics["cosine_mean"])
    # the report has QAT's own plot: the training curve and the learned ranges
    manifest = result.artifact.manifest
    assert "plots/step1-qat.png" in manifest.files
    assert (result.artifact.path / "plots" / "step1-qat.png").stat().st_size > 10_000
