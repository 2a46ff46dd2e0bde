"""PyTorch model state and its loaders: Python factories, TorchScript, torch.export.

Nothing here unpickles an arbitrary file: state dicts load with ``weights_only=True``
or from safetensors, and pickled modules are refused with a fix.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from slimserve.core.callables import resolve_callable
from slimserve.core.errors import ModelLoadError, first_line


@dataclass
class TorchModel:
    """An ``nn.Module`` with example inputs and the names its inputs/outputs get in ONNX."""

    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...] | None = None
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("output",)
    # Dynamic axes per input when more than the batch is dynamic (a text's sequence axis).
    dynamic_axes: dict[str, dict[int, str]] | None = None
    hf_folder: Path | None = None  # a Hugging Face model's folder: tokenizer and config
    task: str | None = None  # "text-generation" for a causal LM (models/causal_lm.py)
    format: str = field(default="torch", init=False)

    def with_module(self, module: torch.nn.Module) -> TorchModel:
        """The same model description around another module (e.g. a pruned copy)."""
        return replace(self, module=module)


def as_eval(module: torch.nn.Module) -> torch.nn.Module:
    """``module.eval()``; a ``torch.export`` program's module is already fixed in inference
    form and refuses eval() (NotImplementedError), so it is returned as is."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def _as_inputs(value: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(value)
    raise ModelLoadError(
        "The model factory's example inputs must be a tensor or a tuple of tensors, "
        f"got {type(value).__name__}. Return (module, example_inputs) from the factory."
    )


def default_names(prefix: str, count: int) -> tuple[str, ...]:
    """'input' for one tensor, 'input_0', 'input_1', ... for several."""
    return (prefix,) if count == 1 else tuple(f"{prefix}_{i}" for i in range(count))


def load_factory(spec: str, weights: Path | None = None) -> TorchModel:
    """Build a model with a ``"pkg.module:function"`` factory; optionally load weights.

    The factory returns ``(module, example_inputs)`` or a ready ``TorchModel``.
    """
    result = resolve_callable(spec)()
    if isinstance(result, TorchModel):
        model = result
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        inputs = _as_inputs(result[1])
        model = TorchModel(result[0], inputs, default_names("input", len(inputs)), ("output",))
    elif isinstance(result, torch.nn.Module):
        model = TorchModel(result)
    else:
        raise ModelLoadError(
            f"Factory '{spec}' returned {type(result).__name__}; it must return "
            "(nn.Module, example_inputs), an nn.Module, or a slimserve.TorchModel."
        )
    if weights is not None:
        load_weights(model.module, weights)
    model.module.eval()
    return model


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a state dict from ``.safetensors`` or a weights-only ``.pt``/``.pth`` file."""
    if not path.is_file():
        raise ModelLoadError(f"Weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise ModelLoadError(
                f"'{path}' is not a readable safetensors file ({exc}). Re-save it with "
                "safetensors.torch.save_file(module.state_dict(), path)."
            ) from exc
    else:
        state = _load_weights_only(path)
        if not isinstance(state, dict):
            raise ModelLoadError(
                f"'{path}' holds a {type(state).__name__}, not a state dict. "
                "Save module.state_dict() instead."
            )
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"Weights in '{path}' do not fit the model built by the factory: {first_line(exc)}. "
            "Check that the factory builds the same architecture the weights were saved from."
        ) from exc


def _load_weights_only(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"Refused to load '{path}': it contains pickled Python objects, and unpickling "
            "can run arbitrary code, so slimserve never does it. Save the model with "
            "torch.jit.save (TorchScript) or torch.export.save (.pt2), or save its "
            "state_dict with safetensors and load it through a 'module:function' factory."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(
            f"'{path}' is not a readable PyTorch file ({exc}). Check that the file is complete."
        ) from exc


def load_torchscript(path: Path) -> TorchModel:
    """Load a TorchScript archive (``torch.jit.save``). Pickled modules are refused."""
    try:
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:
        # Not TorchScript: say what the file is instead, without unpickling it unsafely.
        content = _load_weights_only(path)
        if isinstance(content, dict):
            raise ModelLoadError(
                f"'{path}' is a state dict, not a model. Give it as weights of a factory: "
                "model: {python: 'pkg.module:build', weights: '" + str(path) + "'}."
            ) from exc
        raise ModelLoadError(
            f"'{path}' is not a TorchScript archive ({type(content).__name__} inside). "
            "Save the model with torch.jit.save or torch.export.save."
        ) from exc
    module.eval()
    return TorchModel(module)


def load_exported_program(path: Path) -> TorchModel:
    """Load a ``torch.export`` program (``.pt2``) with its example inputs."""
    from slimserve.models.program import read_program

    try:
        program = read_program(path.read_bytes(), str(path))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"'{path}' is not a readable torch.export program ({exc}). "
            "Save one with torch.export.save(torch.export.export(module, args), path)."
        ) from exc
    inputs: tuple[torch.Tensor, ...] | None = None
    example = getattr(program, "example_inputs", None)
    if example is not None:
        args = example[0]
        if all(isinstance(a, torch.Tensor) for a in args):
            inputs = tuple(args)
    names = default_names("input", len(inputs)) if inputs else ("input",)
    return TorchModel(program.module(), inputs, names, ("output",))
