"""Decoder language models (causal LMs) from a Hugging Face folder or a GGUF file.

A causal LM is a ``TorchModel`` whose task is ``text-generation``: inputs ``input_ids``
and ``attention_mask``, output ``logits`` (every position's next-token scores), with its
tokenizer and chat template in ``hf_folder``. A GGUF file is dequantized to float32 by
transformers (``gguf_file=``; needs ``gguf`` and ``accelerate``, the ``[llm]`` extra) and
saved once as a Hugging Face folder in the user's cache, keyed by the file's sha256, so
the generation runtimes' builders and the tokenizer read one folder either way.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from slimserve.core.errors import ModelLoadError, first_line, require
from slimserve.models.hf import load_tokenizer, local_folder, offline
from slimserve.models.torch import TorchModel

TEXT_GENERATION = "text-generation"
SAMPLE_PROMPT = "The capital of France is"


class NextTokenLogits(torch.nn.Module):
    """The causal LM as a plain function of token ids: every position's logits, no cache
    (what quality is measured on; generation runs in a generation runtime)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits: torch.Tensor = out.logits
        return logits


def load_causal_lm(path: str | Path) -> TorchModel:
    """The causal LM saved in the Hugging Face folder ``path``, in float32."""
    require("transformers", "llm", "Decoder language models")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    folder = local_folder(path)
    tokenizer = load_tokenizer(folder)
    with offline():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32
            )
        except Exception as exc:
            raise ModelLoadError(
                f"transformers could not load '{folder}' as a causal LM: {first_line(exc)}."
            ) from exc
    model.eval()  # type: ignore[no-untyped-call]
    encoded = tokenizer([SAMPLE_PROMPT], return_tensors="pt")
    names = ("input_ids", "attention_mask")
    return TorchModel(
        NextTokenLogits(model).eval(),
        tuple(encoded[n] for n in names),
        names,
        ("logits",),
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        hf_folder=folder,
        task=TEXT_GENERATION,
    )


CALIBRATION_WINDOW = 128
"""Tokens per window of calibration text (pruning importance, AWQ, scale estimation)."""


def text_windows(tokens: list[int], window: int, limit: int | None, what: str) -> list[list[int]]:
    """Consecutive windows of ``window`` tokens (at most ``limit``), or a DataError naming
    the recipe key ``what`` (e.g. ``data.calibration``) to give more text through."""
    from slimserve.core.errors import DataError

    windows = [tokens[i : i + window] for i in range(0, len(tokens) - window + 1, window)]
    if not windows:
        raise DataError(
            f"The text for {what} holds {len(tokens)} tokens, fewer than one window of "
            f"{window}: give more text ({what})."
        )
    return windows[:limit] if limit else windows


GGUF_SOURCE = "gguf_source.json"


def gguf_folder(path: str | Path, cache: Path | None = None) -> Path:
    """A Hugging Face folder holding the GGUF file's model dequantized to float32 and its
    tokenizer (chat template included): made once, then found by the file's sha256."""
    from slimserve.core.files import sha256_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError(f"GGUF file '{file}' does not exist.")
    with file.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(f"'{file}' is not a GGUF file (it does not start with 'GGUF').")
    root = cache or default_cache()
    digest = sha256_file(file)
    folder = root / f"gguf-{digest[:16]}"
    if (folder / "config.json").is_file():
        _note_source(folder, file, digest)
        return folder
    require("gguf", "llm", "Reading GGUF files")
    require("accelerate", "llm", "Reading GGUF files")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # slimserve's own bar
    with offline():
        try:
            tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
            model = AutoModelForCausalLM.from_pretrained(
                file.parent, gguf_file=file.name, dtype=torch.float32
            )
        except Exception as exc:
            raise ModelLoadError(
                f"transformers could not read the GGUF file '{file}': {first_line(exc)}."
            ) from exc
    _save_dequantized(model, tokenizer, folder)
    _note_source(folder, file, digest)
    return folder


def _note_source(folder: Path, file: Path, digest: str) -> None:
    """Where the folder's weights came from (``weights: gguf`` re-reads the file's own
    blocks), rewritten atomically when the file moved."""
    note = {"path": str(file.resolve()), "sha256": digest}
    path = folder / GGUF_SOURCE
    if path.is_file() and json.loads(path.read_text()) == note:
        return
    tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(note))
    os.replace(tmp, path)


def gguf_source(folder: Path) -> Path | None:
    """The GGUF file a dequantized folder was made from, if it still holds the same bytes."""
    from slimserve.core.files import sha256_file

    path = folder / GGUF_SOURCE
    if not path.is_file():
        return None
    note = json.loads(path.read_text())
    file = Path(note["path"])
    return file if file.is_file() and sha256_file(file) == note["sha256"] else None


def _save_dequantized(model: Any, tokenizer: Any, folder: Path) -> None:
    """save_pretrained into a temporary sibling, renamed into place (a killed save leaves
    no half folder to be found later)."""
    # transformers marks a model read from GGUF as quantized and refuses to save it, yet
    # its weights are already float32: drop the mark.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_cache() -> Path:
    """Where dequantized GGUF models are kept (SLIMSERVE_CACHE, else the user cache)."""
    configured = os.environ.get("SLIMSERVE_CACHE")
    if configured:
        return Path(configured)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("slimserve"))
