"""torch -> ONNX export: dynamic batch, names, and the parity check (and its failure)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimserve as ss


def test_export_has_dynamic_batch_and_names(digits_torch, digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    assert digits_onnx.input_names == ("input",)
    assert digits_onnx.output_names == ("output",)
    assert max(op.version for op in digits_onnx.proto.opset_import if op.domain == "") >= 17
    predictor = ss.load_predictor(digits_onnx)
    for batch in (1, 7, 64):
        x = digits_test.inputs["input"][:batch]
        (out,) = predictor.predict({"input": x})
        with torch.no_grad():
            expected = digits_torch.module(torch.from_numpy(x)).numpy()
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_parity_report_is_within_tolerance(digits_torch, exporter: str) -> None:  # type: ignore[no-untyped-def]
    config = ss.ExportConfig(exporter=exporter)
    onnx_model = ss.export_onnx(digits_torch, config)
    report = ss.check_parity(digits_torch, onnx_model, digits_torch.example_inputs, config)
    assert report["output"]["max_abs_error"] < 1e-4
    assert report["output"]["cosine_min"] > 0.9999


class FrozenNoise(torch.nn.Module):
    """forward() reads Python state that export freezes into a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.rng = np.random.default_rng(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(self.rng.uniform(1, 2))


def test_parity_failure_names_the_output() -> None:
    model = ss.TorchModel(FrozenNoise().eval(), (torch.randn(2, 4),), ("x",), ("scores",))
    with pytest.raises(ss.ExportError, match="output 'scores' differs from torch"):
        ss.ExportConfig(exporter="torchscript").apply(model, ss.Context())


def test_export_without_example_inputs_or_data() -> None:
    model = ss.TorchModel(torch.nn.Linear(4, 2).eval())
    with pytest.raises(ss.ExportError, match="needs example inputs"):
        ss.ExportConfig().apply(model, ss.Context())


def test_export_takes_example_inputs_from_data() -> None:
    model = ss.TorchModel(torch.nn.Linear(4, 2).eval())
    data = ss.Dataset({"features": np.random.default_rng(0).normal(size=(8, 4)).astype("f4")})
    onnx_model = ss.ExportConfig().apply(model, ss.Context(data={"eval": data}))
    assert onnx_model.input_names == ("input",)


def test_bad_export_config_values() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 17"):
        ss.ExportConfig(opset=11)
