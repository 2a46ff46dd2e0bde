"""Keras 3 models on the torch backend: import, checks, safe loading, and the TorchModel view.

Keras 3 with ``KERAS_BACKEND=torch`` builds its layers as ``torch.nn.Module`` s and keeps
its weights as torch parameters, so a Keras model goes through slimserve's torch path
(export, parity, quantization) unchanged, and no TensorFlow is needed. ``.keras`` files
are loaded with Keras' safe mode on: a file that needs arbitrary code is refused.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimserve.core.errors import MissingExtraError, ModelLoadError, SlimserveError, first_line
from slimserve.models.torch import TorchModel, default_names

KERAS_SUFFIX = ".keras"
KERAS2_SUFFIXES = (".h5", ".hdf5")
# Where Keras 2 / tf.keras classes live: tf.keras, the tf_keras package, and Keras 2.x.
_KERAS2_MODULES = ("tensorflow", "tf_keras", "keras.engine", "keras.src.engine", "keras.layers")


def import_keras(feature: str = "Keras support") -> Any:
    """Import Keras 3 on the torch backend, or say exactly why it cannot be used."""
    if "keras" not in sys.modules:
        # The backend is fixed when keras is first imported; torch needs no TensorFlow.
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as exc:
        if exc.name == "keras":
            raise MissingExtraError("keras", "keras", feature) from exc
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        raise SlimserveError(
            f"Keras is installed but failed to import on its '{backend}' backend "
            f"({first_line(exc)}). slimserve runs Keras on torch: set KERAS_BACKEND=torch."
        ) from exc
    major = int(str(getattr(keras, "__version__", "0")).split(".")[0])
    if major < 3:
        raise SlimserveError(
            f"{feature} needs Keras 3, but Keras {keras.__version__} is installed. "
            "Install it with: pip install 'slimserve[keras]'"
        )
    backend = keras.backend.backend()
    if backend != "torch":
        raise SlimserveError(
            f"{feature} needs Keras' torch backend, but Keras is running on '{backend}'. "
            "Set KERAS_BACKEND=torch before anything imports keras (or import "
            "slimserve.keras first)."
        )
    return keras


def check_keras3(obj: Any, what: str = "The model") -> None:
    """Refuse Keras 2 / tf.keras objects with a message that says how to move them over."""
    module = type(obj).__module__
    if any(module == m or module.startswith(m + ".") for m in _KERAS2_MODULES):
        raise SlimserveError(
            f"{what} is a Keras 2 / tf.keras object ({module}.{type(obj).__name__}); "
            "slimserve works with Keras 3. Save it from TensorFlow with "
            "model.save('model.keras') (TF 2.13+), load that file with Keras 3 "
            "(keras.saving.load_model), or export it to ONNX with tf2onnx and give the "
            ".onnx file to slimserve."
        )


class KerasForward(nn.Module):
    """A Keras model as a plain torch module: positional tensors in, inference mode.

    Keras' own ``__call__`` takes one structure of inputs and a ``training`` flag; torch's
    exporters and slimserve's runtime call ``forward(*tensors)``.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.keras_model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        args = inputs[0] if len(inputs) == 1 else list(inputs)
        out = self.keras_model(args, training=False)
        if isinstance(out, dict):
            return tuple(out.values())
        if isinstance(out, list):
            return tuple(out)
        return out


def is_keras(module: nn.Module) -> bool:
    return isinstance(module, KerasForward)


def keras_torch_model(model: Any) -> TorchModel:
    """Wrap a built Keras 3 model as a TorchModel (names and example inputs from its inputs)."""
    keras = import_keras()
    check_keras3(model)
    if not isinstance(model, keras.Model):
        raise SlimserveError(
            f"Expected a keras.Model, got {type(model).__name__}. Wrap layers in "
            "keras.Sequential or a functional keras.Model first."
        )
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise SlimserveError(
            "The Keras model has no defined inputs (it was never built). Start it with "
            "keras.Input(shape) or call it once on data before handing it to slimserve."
        )
    names = [_clean_name(t.name) for t in inputs]
    input_names = (
        tuple(names) if all(names) and len(set(names)) == len(names) else None
    ) or default_names("input", len(inputs))
    outputs = list(getattr(model, "outputs", None) or [])
    output_names = default_names("output", max(1, len(outputs)))
    examples: tuple[torch.Tensor, ...] | None = _example_inputs(inputs)
    return TorchModel(KerasForward(model).eval(), examples, input_names, output_names)


def _clean_name(name: str) -> str:
    # Keras names unnamed inputs 'input_layer_N' / 'keras_tensor_N': those say nothing (and
    # change from run to run), so they become 'input'.
    return "" if re.fullmatch(r"(input_layer|keras_tensor)(_\d+)?", name) else name


def _example_inputs(inputs: list[Any]) -> tuple[torch.Tensor, ...] | None:
    """Two random samples per input, for the export parity check (None: a dim is unknown)."""
    rng = np.random.default_rng(0)
    tensors = []
    for spec in inputs:
        shape = (2, *spec.shape[1:])
        if any(d is None for d in shape):
            return None  # the recipe's data gives the examples instead
        dtype = np.dtype(str(spec.dtype))
        if dtype.kind == "f":
            tensors.append(torch.from_numpy(rng.standard_normal(shape).astype(dtype)))
        else:
            tensors.append(torch.zeros(shape, dtype=torch.from_numpy(np.zeros(1, dtype)).dtype))
    return tuple(tensors)


def load_keras(path: Path) -> TorchModel:
    """Load a ``.keras`` file with safe mode on and wrap it for the torch path."""
    path = Path(path)
    if path.suffix.lower() in KERAS2_SUFFIXES:
        raise ModelLoadError(
            f"'{path}' is a legacy HDF5 (Keras 2 / tf.keras) file. slimserve loads the "
            "Keras 3 '.keras' format: load the model in Keras and re-save it with "
            "model.save('model.keras'), or export it to ONNX (tf2onnx) and give the .onnx."
        )
    if path.is_dir() and (path / "saved_model.pb").is_file():
        raise ModelLoadError(
            f"'{path}' is a TensorFlow SavedModel folder, which Keras 3 cannot load as a "
            "model. Re-save the model with model.save('model.keras') in TensorFlow, or "
            "export it to ONNX (tf2onnx) and give the .onnx file."
        )
    if not path.is_file():
        raise ModelLoadError(f"Keras model file '{path}' does not exist.")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"'{path}' is not a readable .keras file (a .keras file is a zip archive). "
            "Check that the file is complete, or re-save it with model.save('model.keras')."
        )
    keras = import_keras("Loading a .keras model")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise ModelLoadError(
                f"Refused to load '{path}': it needs unsafe deserialization (a Lambda layer "
                "or other Python code stored in the file), and running code from a model "
                "file is how it can take over the machine, so slimserve keeps Keras' safe "
                "mode on. Replace the Lambda with a registered custom layer "
                "(@keras.saving.register_keras_serializable) imported before loading, and "
                "re-save the model."
            ) from exc
        raise ModelLoadError(_keras_load_message(path, exc)) from exc
    except (TypeError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(_keras_load_message(path, exc)) from exc
    return keras_torch_model(model)


def _keras_load_message(path: Path, exc: BaseException) -> str:
    detail = first_line(exc)
    if "Could not locate" in str(exc) or "custom" in str(exc).lower():
        return (
            f"Keras could not rebuild '{path}': {detail}. The model uses a custom layer "
            "or function: register it with @keras.saving.register_keras_serializable in a "
            "module you import before loading (recipes: give the model as a python "
            "factory that imports it)."
        )
    return f"Keras could not load '{path}': {detail}. Re-save it with model.save('model.keras')."
