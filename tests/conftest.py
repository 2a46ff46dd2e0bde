"""Shared fixtures: the real digits CNN (trained once per session) and its ONNX export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault(
    "SLIMSERVE_CACHE", str(Path(__file__).parent.parent / ".pytest_cache" / "models")
)
os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 runs on torch here, never on TF
torch.set_num_threads(2)

import slimserve as ss  # noqa: E402
from slimserve.artifact import Manifest, SourceRecord  # noqa: E402
from slimserve.examples.digits import load_split  # noqa: E402
from slimserve.models.onnx import describe_io  # noqa: E402


@pytest.fixture(scope="session")
def digits_torch() -> ss.TorchModel:
    model = ss.load_model("example:digits")
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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT built from a config (random weights, no download) with a word-piece
    tokenizer over real English words, saved as Hugging Face saves models."""
    pytest.importorskip("transformers")
    from slimserve.examples.tiny_bert import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama built from a config (random weights, no download), a byte-level
    tokenizer and a chat template, saved as Hugging Face saves models."""
    pytest.importorskip("transformers")
    from slimserve.examples.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def prose(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out English prose (scikit-learn's dataset descriptions) as a text file."""
    from slimserve.data import english_split

    path = tmp_path_factory.mktemp("prose") / "prose.txt"
    path.write_text("\n".join(english_split("other")))
    return path


def manifest_for(model: ss.OnnxModel, runtime: str = "onnx") -> Manifest:
    """A minimal manifest for the digits model saved as an artifact by hand."""
    return Manifest(
        name="digits",
        created="2026-01-01T00:00:00+00:00",
        slimserve_version=ss.__version__,
        source=SourceRecord(spec={"example": "digits"}),
        recipe={},
        io=describe_io(model.proto),
        runtime=runtime,  # type: ignore[arg-type]
    )
