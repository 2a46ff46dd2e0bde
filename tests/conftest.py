"""Shared fixtures: the real digits CNN (trained once per session) and its ONNX export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault(
    "SLIMSERVE_CACHE", str(Path(__file__).parent.parent / ".pytest_cache" / "models")
)
torch.set_num_threads(2)

import slimserve as ss  # noqa: E402
from slimserve.examples.digits import load_split  # noqa: E402


@pytest.fixture(scope="session")
def digits_torch() -> ss.TorchModel:
    model = ss.load("example:digits")
    assert isinstance(model, ss.TorchModel)
    return model


@pytest.fixture(scope="session")
def digits_onnx(digits_torch: ss.TorchModel) -> ss.OnnxModel:
    return ss.ExportConfig().apply(digits_torch, ss.Context())


@pytest.fixture(scope="session")
def digits_test() -> ss.Dataset:
    x, y = load_split("test")
    return ss.Dataset({"input": x}, y)


@pytest.fixture(scope="session")
def digits_train() -> ss.Dataset:
    x, y = load_split("train")
    return ss.Dataset({"input": x}, y)


@pytest.fixture
def onnx_file(tmp_path: Path, digits_onnx: ss.OnnxModel) -> Path:
    path = tmp_path / "digits.onnx"
    path.write_bytes(digits_onnx.to_bytes())
    return path
