"""The one place that dispatches on model format: ``load_predictor(x) -> Predictor``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from slimserve.runtime.onnx import LARGE_RUN_ELEMENTS, OrtPredictor, trim_memory
from slimserve.runtime.torch import TorchPredictor

if TYPE_CHECKING:
    from slimserve.artifact import Artifact
    from slimserve.data import Dataset
    from slimserve.models import Model, OnnxModel
    from slimserve.models.edge import EdgeModel


class Predictor(Protocol):
    """Runs a batch of named numpy inputs and returns the outputs in order."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def load_predictor(
    source: Model | EdgeModel | str | Path, threads: int = 2, spinning: bool = True
) -> Predictor:
    """A predictor for a model state, a model file or an artifact folder (which runs in
    the runtime its manifest names: ONNX Runtime, its torch program, or OpenVINO). ``spinning``:
    see ``OrtPredictor``."""
    from slimserve.artifact import is_artifact, load_artifact
    from slimserve.loading import load_model
    from slimserve.models import OnnxModel

    if isinstance(source, OnnxModel):  # first: an ONNX model never needs torch imported
        return _onnx_predictor(source, threads, spinning)
    from slimserve.models.edge import EDGE_SUFFIXES, EdgeModel

    if not isinstance(source, EdgeModel) and Path(str(source)).suffix in EDGE_SUFFIXES:
        source = _edge_file(Path(str(source)))
    if isinstance(source, EdgeModel):  # a device model in LiteRT or ExecuTorch
        from slimserve.runtime.edge import edge_predictor

        return edge_predictor(source, threads)  # type: ignore[no-any-return]
    from slimserve.models import TorchModel

    if not isinstance(source, TorchModel) and is_artifact(source):
        return for_artifact(load_artifact(source), threads, spinning)
    model = source if isinstance(source, TorchModel) else load_model(source)
    if isinstance(model, OnnxModel):
        return _onnx_predictor(model, threads, spinning)
    return TorchPredictor(model, threads)


def _edge_file(path: Path) -> EdgeModel:
    """A ``.tflite`` or ``.pte`` file given by path (its tensors named as it names them)."""
    from slimserve.core.errors import ModelLoadError
    from slimserve.models.edge import EDGE_SUFFIXES, EdgeModel

    if not path.is_file():
        raise ModelLoadError(f"Model file '{path}' does not exist.")
    return EdgeModel(path.read_bytes(), EDGE_SUFFIXES[path.suffix])


def _onnx_predictor(model: OnnxModel, threads: int, spinning: bool) -> Predictor:
    if model.engine == "onnxruntime":
        return OrtPredictor(model, threads, spinning)
    from slimserve.runtime.openvino import OvPredictor

    return OvPredictor(model, threads, "f32" if model.engine == "openvino-f32" else "auto")


def served_model(artifact: Artifact) -> Model:
    """The model an artifact is served with: ``manifest.runtime`` picks the file."""
    from slimserve.models.llm import LlmModel

    if isinstance(artifact.model, LlmModel):
        from slimserve.core.errors import ArtifactError

        raise ArtifactError(
            f"'{artifact.path}' is a decoder LM artifact: it runs in its generation runtime "
            '(slimserve generate ARTIFACT "prompt", or ss.load_generator), not as a '
            "predictor of tensors."
        )
    if artifact.manifest.runtime == "torch":
        from slimserve.artifact import PROGRAM_FILE
        from slimserve.core.errors import ArtifactError, ModelLoadError
        from slimserve.models import TorchModel
        from slimserve.runtime.torch import load_program

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
    from slimserve.models.edge import EdgeModel

    if isinstance(artifact.model, EdgeModel):
        return artifact.model  # type: ignore[return-value]  # load_predictor runs it
    if artifact.manifest.runtime == "openvino":
        from dataclasses import replace

        f32 = artifact.manifest.runtime_precision == "f32"
        return replace(artifact.model, engine="openvino-f32" if f32 else "openvino")
    return artifact.model


def for_artifact(artifact: Artifact, threads: int = 2, spinning: bool = True) -> Predictor:
    """The predictor an artifact is served with (ONNX Runtime or its torch program), in
    the precision its manifest records: never another one picked here. Warns when this
    CPU lacks what made that precision fast where it was chosen."""
    import warnings

    from slimserve.core.cpu import missing_feature_warning
    from slimserve.core.errors import CpuFeatureWarning

    warning = missing_feature_warning(artifact.manifest.precision, artifact.manifest.cpu_features)
    if warning is not None:
        warnings.warn(f"{artifact.path}: {warning}", CpuFeatureWarning, stacklevel=2)
    predictor = load_predictor(served_model(artifact), threads, spinning)
    small = artifact.manifest.small_batches
    if small is None:
        return predictor
    from slimserve.runtime.routed import RoutedPredictor

    small_predictor = _onnx_predictor(small_batch_model(artifact), threads, spinning)
    return RoutedPredictor(small_predictor, predictor, int(small["max_tokens"]))


def small_batch_model(artifact: Artifact) -> OnnxModel:
    """The artifact's executable for small batches (``manifest.small_batches``), hashed as
    it is read, in the runtime the manifest names for it."""
    import onnx

    from slimserve.artifact import runtime_file_bytes
    from slimserve.core.errors import ArtifactError
    from slimserve.models import OnnxModel

    small = artifact.manifest.small_batches or {}
    engines = {"onnx": "onnxruntime", "openvino": "openvino", "openvino-f32": "openvino-f32"}
    if not isinstance(small.get("file"), str) or small.get("runtime") not in engines:
        raise ArtifactError(
            f"{artifact.path}/manifest.json: small_batches needs a 'file' and a 'runtime' "
            f"({', '.join(engines)}), not {small}. Re-save the artifact with slimserve optimize."
        )
    data = runtime_file_bytes(artifact.path, str(small["file"]), artifact.manifest, True)
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:
        raise ArtifactError(
            f"{artifact.path / small['file']} is not a readable ONNX model."
        ) from exc
    return OnnxModel(proto, engine=engines[str(small["runtime"])])  # type: ignore[arg-type]


def predict_all(predictor: Predictor, data: Dataset, batch_size: int = 256) -> np.ndarray:
    """The first output of the model over a whole dataset, batch by batch. A torch text
    model (an ``attention_mask`` input) sees the sentences in length order, each batch cut
    to its longest: the split is padded to its longest sentence, and padded positions are
    masked, so the outputs are the same for a fraction of the work."""
    from slimserve.data import TEXT_BATCH, length_order, padded_width

    order = length_order(data.inputs) if isinstance(predictor, TorchPredictor) else None
    if order is None:
        outputs = [predictor.predict(batch.inputs)[0] for batch in data.batches(batch_size)]
        return np.concatenate(outputs)
    mask = data.inputs["attention_mask"]
    outputs = []
    for start in range(0, len(order), TEXT_BATCH):
        rows = order[start : start + TEXT_BATCH]
        width = padded_width(mask[rows])
        inputs = {
            k: v[rows][:, :width] if v.shape == mask.shape else v[rows]
            for k, v in data.inputs.items()
        }
        outputs.append(predictor.predict(inputs)[0])
    result = np.empty_like(np.concatenate(outputs))
    result[order] = np.concatenate(outputs)
    return result


__all__ = [
    "LARGE_RUN_ELEMENTS",
    "OrtPredictor",
    "Predictor",
    "TorchPredictor",
    "for_artifact",
    "load_predictor",
    "predict_all",
    "served_model",
    "trim_memory",
]
