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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT built from a config (random weights, no download) with a word-piece
    tokenizer over real English words, saved as Hugging Face saves models."""
    pytest.importorskip("transformers")
    import re

    from transformers import BertConfig, BertModel, BertTokenizerFast

    from slimserve.examples.minilm import english_sentences

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for s in english_sentences(600) for w in re.findall(r"[a-z]+", s.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *list("!\"'(),-.:;?_"), *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
