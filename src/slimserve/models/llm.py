"""A decoder LM built for a generation runtime: an onnxruntime-genai folder
(``genai_config.json``, ``model.onnx`` with its external weights, the tokenizer files and
chat template), its weights in float32, int8 or int4 (MatMulNBits)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class LlmModel:
    """The folder a generation runtime reads; ``weights`` says their precision."""

    folder: Path
    weights: str = "fp32"
    format: str = field(default="llm", init=False)

    def files(self) -> dict[str, Path]:
        """Every file of the folder, by its path relative to the folder."""
        return {
            p.relative_to(self.folder).as_posix(): p
            for p in sorted(self.folder.rglob("*"))
            if p.is_file()
        }

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files().values())

    def config(self) -> dict[str, Any]:
        """``genai_config.json``: the model's shape, context length and search defaults."""
        loaded: dict[str, Any] = json.loads((self.folder / GENAI_CONFIG).read_text())
        return loaded
