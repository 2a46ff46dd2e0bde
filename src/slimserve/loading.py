"""One entry point that turns a source into a model: a recipe's ModelSpec, a file path,
``"pkg.module:function"``, ``example:NAME`` or an artifact folder (hashes verified)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.core.callables import resolve_callable
from slimserve.core.errors import ModelLoadError
from slimserve.core.specs import ModelSpec
from slimserve.models.onnx import load_onnx

if TYPE_CHECKING:
    from slimserve.models import Model

EXAMPLES = {"digits": "slimserve.examples.digits:build"}
TEXT_EXAMPLES = {"minilm": "slimserve.examples.minilm:model_folder"}
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".jit", ".ts")


def load_model(source: ModelSpec | str | Path, weights: str | Path | None = None) -> Model:
    """Load a model from a recipe spec, a path, ``"pkg.module:function"`` or ``example:NAME``.

    Paths: ``.onnx``; TorchScript ``.pt``; ``torch.export`` ``.pt2``; Keras 3 ``.keras``;
    an artifact folder.
    """
    if isinstance(source, ModelSpec):
        return _load_spec(source)
    text = str(source)
    if isinstance(source, str) and text.startswith("example:"):
        return _load_spec(ModelSpec(example=text.removeprefix("example:")))
    path = Path(text)
    if isinstance(source, str) and not path.exists() and ":" in text:
        from slimserve.models.torch import load_factory

        return load_factory(text, Path(weights) if weights else None)
    return _load_path(path)


def parse_model_spec(text: str) -> ModelSpec:
    """A recipe's model block for a command-line source, read as ``load_model`` reads it:
    ``example:NAME``; an existing path (a ``.keras`` file as ``keras``, anything else as
    ``path``, made absolute); otherwise a ``pkg.module:function`` factory."""
    if text.startswith("example:"):
        return ModelSpec(example=text.removeprefix("example:"))
    path = Path(text)
    if path.exists():
        if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
            return ModelSpec(keras=path.resolve())
        if is_hf_folder(path):
            return ModelSpec(hf=path.resolve())
        if path.suffix.lower() == ".gguf":
            return ModelSpec(gguf=path.resolve())
        return ModelSpec(path=path.resolve())
    if ":" in text:
        return ModelSpec(python=text)
    raise ModelLoadError(
        f"'{text}' is neither a file, 'example:NAME' nor a 'pkg.module:function' factory."
    )


def source_record(spec: ModelSpec) -> dict[str, Any]:
    """The model block as the manifest and report show it: ``task`` only for text
    models (it means nothing for a CNN)."""
    record = spec.model_dump(mode="json", exclude_none=True)
    if spec.hf is None and spec.example not in TEXT_EXAMPLES:
        record.pop("task", None)
    return record


def causal_lm_folder(spec: ModelSpec) -> Path:
    """The Hugging Face folder a decoder LM loads from: its own, or the one its GGUF file
    (or the smollm2 example's) is dequantized into once."""
    if spec.hf is not None:
        return spec.hf
    from slimserve.models.causal_lm import gguf_folder

    if spec.gguf is not None:
        return gguf_folder(spec.gguf)
    from slimserve.examples.smollm2 import gguf_file

    return gguf_folder(gguf_file())


def tokenizer_folder(spec: ModelSpec) -> Path | None:
    """Where a recipe's text data finds its tokenizer: the Hugging Face model's folder."""
    if spec.is_causal_lm:
        return causal_lm_folder(spec)
    if spec.hf is not None:
        return spec.hf
    if spec.example in TEXT_EXAMPLES:
        folder: Path = resolve_callable(TEXT_EXAMPLES[spec.example])()
        return folder
    return None


def _load_spec(spec: ModelSpec) -> Model:
    if spec.is_causal_lm:
        from slimserve.models.causal_lm import load_causal_lm

        return load_causal_lm(causal_lm_folder(spec))
    if spec.keras is not None:
        from slimserve.models.keras import load_keras

        return load_keras(spec.keras)
    if spec.hf is not None:
        from slimserve.models.hf import load_hf

        return load_hf(spec.hf, spec.task)
    if spec.example is not None:
        if spec.example in TEXT_EXAMPLES:
            from slimserve.models.hf import load_hf

            return load_hf(resolve_callable(TEXT_EXAMPLES[spec.example])(), spec.task)
        if spec.example not in EXAMPLES:
            available = ", ".join([*EXAMPLES, *TEXT_EXAMPLES])
            raise ModelLoadError(f"Unknown example model '{spec.example}'. Available: {available}.")
        from slimserve.models.torch import load_factory

        return load_factory(EXAMPLES[spec.example], spec.weights)
    if spec.python is not None:
        from slimserve.models.torch import load_factory

        return load_factory(spec.python, spec.weights)
    if spec.path is None:  # the recipe model guarantees one source
        raise ModelLoadError("A model spec needs one of: example, path, python.")
    return _load_path(spec.path)


def is_hf_folder(path: Path) -> bool:
    """A folder ``save_pretrained`` wrote (config.json), not a slimserve artifact."""
    from slimserve.artifact import is_artifact

    return path.is_dir() and (path / "config.json").is_file() and not is_artifact(path)


def _load_path(path: Path) -> Model:
    if path.is_dir():
        from slimserve.artifact import is_artifact, load_artifact

        if is_artifact(path):
            model = load_artifact(path).model
            if model.format == "llm":
                raise ModelLoadError(
                    f"'{path}' is a decoder LM artifact: it runs in its generation runtime "
                    "(slimserve generate, ss.load_generator), not as a model to optimize."
                )
            return model  # type: ignore[return-value]
        if is_hf_folder(path):  # save_pretrained's folder: as {hf: path}
            return _load_spec(ModelSpec(hf=path))
        raise ModelLoadError(
            f"'{path}' is a folder with neither manifest.json (a slimserve artifact) nor "
            "config.json (a Hugging Face save_pretrained folder). Give a model file (.onnx, "
            ".pt, .pt2), an artifact folder or a Hugging Face model folder."
        )
    if not path.exists():
        raise ModelLoadError(f"Model file '{path}' does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return load_onnx(path)
    if suffix in TORCHSCRIPT_SUFFIXES:
        from slimserve.models.torch import load_torchscript

        return load_torchscript(path)
    if suffix == ".pt2":
        from slimserve.models.torch import load_exported_program

        return load_exported_program(path)
    if suffix in (".keras", ".h5", ".hdf5"):
        from slimserve.models.keras import load_keras

        return load_keras(path)
    if suffix == ".gguf":
        return _load_spec(ModelSpec(gguf=path))
    raise ModelLoadError(
        f"Don't know how to load '{path}' (suffix '{suffix}'). Supported: .onnx, "
        "TorchScript .pt, torch.export .pt2, Keras 3 .keras, .gguf, an artifact folder, a "
        "Hugging Face folder, or a 'pkg.module:function' factory."
    )


__all__ = ["EXAMPLES", "TEXT_EXAMPLES", "causal_lm_folder", "load_model", "tokenizer_folder"]
