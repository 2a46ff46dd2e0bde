"""The one place that dispatches on model format: ``load(x) -> Predictor``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from slimserve.errors import DataError

if TYPE_CHECKING:
    from slimserve.artifact import Artifact
    from slimserve.models import Model, OnnxModel, TorchModel


class Predictor(Protocol):
    """Runs a batch of named numpy inputs and returns the outputs in order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def _check_names(expected: tuple[str, ...], inputs: dict[str, np.ndarray]) -> None:
    if set(inputs) != set(expected):
        raise DataError(
            f"The model takes inputs {list(expected)} but got {list(inputs)}. "
            "Name the input arrays after the model's inputs."
        )


class OrtPredictor:
    """An ONNX Runtime session with explicit thread counts. ``spinning=False`` lets ORT's
    worker threads sleep between runs instead of spinning: a batching server needs those
    cycles for the requests around the model (see ``ServeConfig.ort_spinning``)."""

    def __init__(self, model: OnnxModel, threads: int = 2, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if _folds_dequantize(model):
            # Lets ORT fold int8 weights behind DequantizeLinear into float once, at load
            # (quantize/per_token.py); the model has no activation QDQ pairs to fuse.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        self.session = ort.InferenceSession(
            model.to_bytes(), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._input_types = {
            i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()
        }

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        _check_names(self.input_names, inputs)
        feeds: dict[str, np.ndarray] = {
            k: np.ascontiguousarray(v, dtype=self._input_types[k]) for k, v in inputs.items()
        }
        if sum(v.size for v in feeds.values()) > LARGE_RUN_ELEMENTS:
            # ORT's arena keeps the peak of its largest run for good: after a run this
            # large, hand what it grew back (one long-text burst would pin it otherwise).
            outputs = list(self.session.run(None, feeds, self._shrink_arena()))
            trim_memory()
            return outputs
        return list(self.session.run(None, feeds))

    def _shrink_arena(self) -> Any:
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options


def _folds_dequantize(model: OnnxModel) -> bool:
    from slimserve.quantize.per_token import FOLD_DEQUANTIZE

    return any(p.key == FOLD_DEQUANTIZE and p.value == "1" for p in model.proto.metadata_props)


def trim_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it in its arenas otherwise, and a
    burst of long texts would leave a server's RSS high for good)."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


LARGE_RUN_ELEMENTS = 1 << 13  # input elements after which a run shrinks ORT's arena

_ORT_TYPES: dict[str, type] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class TorchPredictor:
    """A torch module run under ``inference_mode`` with a fixed thread count."""

    def __init__(self, model: TorchModel, threads: int = 2) -> None:
        import torch

        self.model = model
        self.threads = threads
        self.input_names = model.input_names
        self.output_names = model.output_names
        from slimserve.models.torch import as_eval

        as_eval(model.module)
        self._torch = torch

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        _check_names(self.input_names, inputs)
        torch.set_num_threads(self.threads)
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names]
        with torch.inference_mode():
            out = self.model.module(*args)
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.detach().float().numpy() for o in outs]


def load(source: Model | str | Path, threads: int = 2, spinning: bool = True) -> Predictor:
    """A predictor for a model state, a model file or an artifact folder (which runs in
    the runtime its manifest names: ONNX Runtime, or its torch program). ``spinning``:
    see ``OrtPredictor``."""
    from slimserve.artifact import MANIFEST_FILE, load_artifact
    from slimserve.models import OnnxModel
    from slimserve.models import load as load_model

    if isinstance(source, OnnxModel):  # first: an ONNX model never needs torch imported
        return OrtPredictor(source, threads, spinning)
    from slimserve.models import TorchModel

    if not isinstance(source, TorchModel) and (Path(source) / MANIFEST_FILE).is_file():
        return for_artifact(load_artifact(source), threads, spinning)
    model = source if isinstance(source, TorchModel) else load_model(source)
    if isinstance(model, OnnxModel):
        return OrtPredictor(model, threads, spinning)
    return TorchPredictor(model, threads)


def served_model(artifact: Artifact) -> Model:
    """The model an artifact is served with: ``manifest.runtime`` picks the file."""
    if artifact.manifest.runtime == "torch":
        from slimserve.artifact import PROGRAM_FILE
        from slimserve.errors import ArtifactError, ModelLoadError
        from slimserve.models import TorchModel
        from slimserve.torch_program import load_program

        names = artifact.manifest.io
        program = artifact.path / PROGRAM_FILE
        try:
            module = load_program(program.read_bytes(), str(program))
        except ModelLoadError as exc:
            raise ArtifactError(str(exc)) from None
        return TorchModel(
            module,
            None,
            tuple(i["name"] for i in names["inputs"]),
            tuple(o["name"] for o in names["outputs"]),
        )
    return artifact.model


def for_artifact(artifact: Artifact, threads: int = 2, spinning: bool = True) -> Predictor:
    """The predictor an artifact is served with (ONNX Runtime or its torch program), in
    the precision its manifest records: never another one picked here. Warns when this
    CPU lacks what made that precision fast where it was chosen."""
    import warnings

    from slimserve.cpu import missing_feature_warning
    from slimserve.errors import CpuFeatureWarning

    warning = missing_feature_warning(artifact.manifest.precision, artifact.manifest.cpu_features)
    if warning is not None:
        warnings.warn(f"{artifact.path}: {warning}", CpuFeatureWarning, stacklevel=2)
    return load(served_model(artifact), threads, spinning)
