"""NNCF static int8 (quantize mode nncf): QDQ ONNX that both ONNX Runtime and OpenVINO
run close to fp32; calibration cut to each sample's own tokens; errors named."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import slimserve as ss
from slimserve.core.errors import MissingExtraError
from slimserve.data import Dataset
from slimserve.techniques.quantize.configs import NncfQuantizeConfig
from slimserve.techniques.quantize.nncf import calibration_samples

pytest.importorskip("nncf")


def test_nncf_int8_runs_in_both_runtimes_close_to_fp32(
    digits_onnx: ss.OnnxModel, digits_train: ss.Dataset, digits_test: ss.Dataset
) -> None:
    config = NncfQuantizeConfig(model_type="default", subset_size=128)
    quantized = ss.quantize(digits_onnx, config, digits_train.take(128))
    ops = {n.op_type for n in quantized.proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x, labels = digits_test.inputs["input"], digits_test.labels
    fp32 = np.argmax(ss.load_predictor(digits_onnx).predict({"input": x})[0], axis=1)
    for model in (quantized, replace(quantized, engine="openvino-f32")):
        predicted = np.argmax(ss.load_predictor(model).predict({"input": x})[0], axis=1)
        assert (predicted == labels).mean() >= (fp32 == labels).mean() - 0.02, model.engine


def test_text_calibration_samples_keep_only_their_own_tokens() -> None:
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    ids = np.arange(10).reshape(2, 5)
    data = Dataset({"input_ids": ids, "attention_mask": mask})
    first, second = calibration_samples(data, ("input_ids", "attention_mask"))
    assert first["input_ids"].tolist() == [[0, 1, 2]] and first["attention_mask"].shape == (1, 3)
    assert second["input_ids"].shape == (1, 5)


def test_a_recipe_with_nncf_and_without_calibration_data_is_refused(tmp_path: Path) -> None:
    recipe = ss.parse_recipe(
        {
            "name": "no-calibration",
            "model": {"example": "digits"},
            "data": {"eval": {"example": "digits", "split": "test", "samples": 64}},
            "steps": [{"quantize": {"mode": "nncf"}}],
            "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
        }
    )
    with pytest.raises(ss.RecipeError, match="data.calibration"):
        ss.run_recipe(recipe, tmp_path)


def test_another_mode_s_key_is_refused_by_name() -> None:
    with pytest.raises(ss.RecipeError, match="'block_size' applies to mode weight_only, not nncf"):
        ss.parse_recipe(
            {
                "name": "x",
                "model": {"example": "digits"},
                "steps": [{"quantize": {"mode": "nncf", "block_size": 64}}],
            }
        )


def test_a_missing_nncf_is_named(
    digits_onnx: ss.OnnxModel, digits_train: ss.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"slimserve\[openvino\]"):
        ss.quantize(digits_onnx, NncfQuantizeConfig(), digits_train.take(16))


def test_smooth_quant_is_exact_in_float(tiny_bert: Path) -> None:
    """SmoothQuant moves scale between activations and weights: before quantization the
    model computes the same function (1e-5), with smaller activation outliers."""
    from slimserve.techniques.quantize.nncf import smooth_quant

    model = ss.load_model(tiny_bert)
    data = ss.load_data({"example": "english", "split": "calibration", "samples": 32}, tiny_bert)
    fp32 = ss.ExportConfig().apply(model, ss.Context(data={"calibration": data}))
    smoothed = smooth_quant(fp32, data, alpha=0.5)
    feeds = {n: data.inputs[n] for n in fp32.input_names}
    expected = ss.load_predictor(fp32).predict(feeds)[0]
    got = ss.load_predictor(smoothed).predict(feeds)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)

    def muls(m: ss.OnnxModel) -> int:
        return sum(n.op_type == "Mul" for n in m.proto.graph.node)

    assert muls(smoothed) > muls(fp32)  # the smoothing scales, one per MatMul input


def test_static_int8_with_smooth_quant_stays_close_to_fp32(tiny_bert: Path) -> None:
    model = ss.load_model(tiny_bert)
    data = ss.load_data({"example": "english", "split": "calibration", "samples": 32}, tiny_bert)
    fp32 = ss.ExportConfig().apply(model, ss.Context(data={"calibration": data}))
    config = ss.StaticQuantizeConfig(smooth_quant_alpha=0.5, op_types=("MatMul",))
    assert config.describe() == "quantize static int8 smoothquant"
    quantized = ss.quantize(fp32, config, data)
    assert "QuantizeLinear" in {n.op_type for n in quantized.proto.graph.node}
    feeds = {n: data.inputs[n] for n in fp32.input_names}
    expected = ss.load_predictor(fp32).predict(feeds)[0]
    got = ss.load_predictor(quantized).predict(feeds)[0]
    from slimserve.core.metrics import fidelity

    assert fidelity(expected, got, embeddings=True)["cosine_mean"] > 0.98


def test_a_graph_nncf_fails_on_gives_a_clear_error(tiny_bert: Path) -> None:
    # NNCF 3.4's full bias correction writes a tensor twice on the padding-free graph
    model = ss.load_model(tiny_bert)
    data = ss.load_data({"example": "english", "split": "calibration", "samples": 16}, tiny_bert)
    ctx = ss.Context(data={"calibration": data})
    onnx_model = ss.ExportConfig().apply(ss.UnpadConfig().apply(model, ctx), ctx)
    config = NncfQuantizeConfig(fast_bias_correction=False, subset_size=16)
    with pytest.raises(ss.ExportError, match="NNCF could not quantize this model: .*defaults"):
        ss.quantize(onnx_model, config, data)
