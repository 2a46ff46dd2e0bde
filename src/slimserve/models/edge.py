"""A model for devices: a LiteRT flatbuffer (``.tflite``) or an ExecuTorch program
(``.pte``), as bytes, with the names of its inputs and outputs. Neither is served over V2:
they run on phones and boards; here they run in LiteRT's interpreter and ExecuTorch's
runtime for ``eval``, ``bench`` and ``check``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EDGE_FILES = {"litert": "model.tflite", "executorch": "model.pte"}
"""The file each device format is stored as in an artifact."""
EDGE_SUFFIXES = {".tflite": "litert", ".pte": "executorch"}


@dataclass(frozen=True)
class EdgeModel:
    """A ``.tflite`` or ``.pte`` model; ``format`` is ``litert`` or ``executorch``."""

    data: bytes
    format: str
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("output",)
    precision: str = "float32"
    extra: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.data

    @property
    def file_name(self) -> str:
        return EDGE_FILES[self.format]


def edge_model(data: bytes, runtime: str, io: dict[str, Any], precision: str | None) -> EdgeModel:
    """A device artifact's model, its tensors named as its manifest's ``io`` records them."""
    names = tuple(str(t["name"]) for t in io.get("inputs", []))
    outputs = tuple(str(t["name"]) for t in io.get("outputs", []))
    return EdgeModel(data, runtime, names, outputs, precision or "float32")
