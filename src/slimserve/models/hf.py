"""Hugging Face encoders from a local folder: feature extraction (mean pooling + L2
normalize, as sentence-transformers computes embeddings) and sequence classification.

Nothing is downloaded, ever: a model is a folder written by ``save_pretrained`` (or a
package that ships one, e.g. ``slimserve.examples.minilm``); anything else fails with a
clear message before transformers is asked, and transformers runs with
``local_files_only`` and ``HF_HUB_OFFLINE=1``. Attention is loaded as the "eager"
implementation: its exported graph is the one ONNX Runtime's transformer optimizer fuses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from slimserve.core.errors import ModelLoadError, first_line, require
from slimserve.models.torch import TorchModel

Task = Literal["feature-extraction", "sequence-classification"]
TASKS: tuple[str, ...] = ("feature-extraction", "sequence-classification")
SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog.",
    "Serving models is the point of optimizing them.",
)


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The 4-D additive mask BERT's eager attention adds to its scores, computed the
    classic way ((1 - mask) * -10000): transformers passes a 4-D mask through unchanged,
    and this is the pattern ONNX Runtime's optimizer recognizes when it fuses attention
    (transformers' own mask code exports as Where/And graphs it does not)."""
    return (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0


class TaskModel(torch.nn.Module):
    """A Hugging Face model as a plain tensor function: feature extraction pools the
    token vectors (mean under the attention mask, then unit length); classification
    returns the logits. With ``encoder`` (a padding-free forward of the same modules,
    ``slimserve.models.unpadded``) the token vectors come from it instead."""

    def __init__(
        self, model: torch.nn.Module, pool: bool, encoder: torch.nn.Module | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.pool = pool
        self.encoder = encoder

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.encoder is not None:
            first: torch.Tensor = self.encoder(input_ids, attention_mask, token_type_ids)
        else:
            first = self.model(
                input_ids=input_ids,
                attention_mask=additive_mask(attention_mask),
                token_type_ids=token_type_ids,
            )[0]
        if not self.pool:
            return first
        mask = attention_mask.unsqueeze(-1).to(first.dtype)
        pooled = (first * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        # F.normalize exports an Expand that ORT's symbolic shape inference cannot follow,
        # which turns off the optimizer's fusions: the same formula, written out.
        norm = torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True)).clamp(min=1e-12)
        return pooled / norm


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration: no library gets to reach a hub."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_folder(path: str | Path, marker: tuple[str, ...] = ("config.json",)) -> Path:
    """The folder of a saved model (one with a ``marker`` file), or a ModelLoadError saying
    why not (never a download)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        looks_like_id = "/" in str(path) and not str(path).startswith((".", "/", "~"))
        hint = (
            f" '{path}' looks like a hub id: slimserve never downloads. Save the model "
            "locally first (model.save_pretrained(DIR); tokenizer.save_pretrained(DIR)) "
            "and give DIR."
            if looks_like_id
            else " Give the folder written by save_pretrained (config.json + weights)."
        )
        raise ModelLoadError(f"Hugging Face model folder '{path}' does not exist.{hint}")
    if not any((folder / name).is_file() for name in marker):
        raise ModelLoadError(
            f"'{folder}' has no {' or '.join(marker)}, so it is not a saved Hugging Face "
            "model. Give the folder written by save_pretrained."
        )
    return folder


def load_tokenizer(path: str | Path) -> Any:
    """The model's own tokenizer (fast), from the local folder."""
    require("transformers", "hf", "Hugging Face models")
    from transformers import AutoTokenizer

    folder = local_folder(path, ("tokenizer_config.json", "tokenizer.json", "config.json"))
    with offline():
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"Could not load a tokenizer from '{folder}': {first_line(exc)}. Save it "
                "next to the model (tokenizer.save_pretrained(DIR))."
            ) from exc


def tokenize(tokenizer: Any, texts: list[str], max_length: int = 128) -> dict[str, Any]:
    """int64 numpy arrays the model takes, padded to the longest text (at most
    ``max_length`` tokens)."""
    encoded = tokenizer(
        list(texts),
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {k: v.astype("int64") for k, v in encoded.items()}


def load_hf(path: str | Path, task: str = "feature-extraction") -> TorchModel:
    """A TorchModel around the local Hugging Face model at ``path``: inputs
    ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the tokenizer makes
    them), output ``embeddings`` (feature-extraction) or ``logits`` (classification),
    batch and sequence axes dynamic."""
    require("transformers", "hf", "Hugging Face models")
    if task not in TASKS:
        raise ModelLoadError(f"Unknown task '{task}'. Supported: {', '.join(TASKS)}.")
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # slimserve's own bar
    folder = local_folder(path)
    tokenizer = load_tokenizer(folder)
    loader: Any = AutoModel if task == "feature-extraction" else AutoModelForSequenceClassification
    with offline():
        try:
            model = loader.from_pretrained(
                folder, local_files_only=True, attn_implementation="eager"
            )
        except Exception as exc:
            raise ModelLoadError(
                f"transformers could not load '{folder}' for {task}: {first_line(exc)}."
            ) from exc
    model.eval()
    module = TaskModel(model, pool=task == "feature-extraction")
    names = tuple(
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    )
    encoded = tokenize(tokenizer, list(SAMPLE_TEXT))
    example = tuple(torch.from_numpy(encoded[n]) for n in names)
    output = "embeddings" if task == "feature-extraction" else "logits"
    return TorchModel(
        module.eval(),
        example,
        names,
        (output,),
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        hf_folder=folder,
    )


TOKENIZER_DIR = "tokenizer"


def tokenizer_files(folder: Path) -> dict[str, bytes]:
    """The model's tokenizer as files for an artifact (``tokenizer/...``)."""
    import tempfile

    tokenizer = load_tokenizer(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {f"{TOKENIZER_DIR}/{p.name}": p.read_bytes() for p in sorted(Path(tmp).iterdir())}


def max_sequence_length(folder: Path) -> int:
    """The longest input the model was trained for: sentence-transformers' setting when
    present, else the tokenizer's limit (at most 512), never more positions than the
    model has (``max_position_embeddings``: a longer input fails in the model)."""
    import json

    positions = 512
    model_config = folder / "config.json"
    if model_config.is_file():
        value = json.loads(model_config.read_text()).get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            positions = value
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return min(value, positions)
    limit = getattr(load_tokenizer(folder), "model_max_length", 512)
    return int(min(limit, 512, positions))


def text_record(folder: Path, task: str) -> dict[str, Any]:
    """What an artifact's manifest says about its text input (``manifest.text``)."""
    return {
        "tokenizer": TOKENIZER_DIR,
        "max_length": max_sequence_length(folder),
        "task": task,
        "pooling": "mean+l2" if task == "feature-extraction" else None,
    }
