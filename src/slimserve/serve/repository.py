"""The models a server serves: one artifact, one .onnx file, or a folder of artifacts
(``NAME/`` or ``NAME/VERSION/``). Hashes are verified at load; requests only ever look
names up in what was loaded, so a name can never reach outside the repository."""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimserve.core.errors import ArtifactError
from slimserve.models.llm import LlmModel

if TYPE_CHECKING:
    from slimserve.artifact import Artifact
    from slimserve.models import OnnxModel

log = logging.getLogger("slimserve.serve")


@dataclass
class TextInput:
    """A text model's tokenizer: requests may send raw strings (BYTES input 'text')."""

    tokenizer: Any
    max_length: int
    task: str = "feature-extraction"  # feature-extraction models get the OpenAI route
    # The encoder's linear layers run on real tokens only (the unpad step): padding
    # costs it little, so the batcher merges sequences of any length into one run.
    padding_free: bool = False
    # Its row counts are multiples of this (the unpad step's token_bucket; 1: exact
    # counts, 0: not padding-free): what serve's warm-up runs through.
    token_bucket: int = 0


@dataclass
class ServedModel:
    name: str
    version: str
    predictor: Any
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    text: TextInput | None = None
    # {input: rows of the table it indexes}: ids outside are a 400 before the model runs.
    index_bounds: dict[str, int] = field(default_factory=dict)
    # The most tokens a sequence may hold (its position table's rows), None if unknown:
    # a longer token input is a 400 before it reaches a batch.
    max_tokens: int | None = None

    @functools.cached_property
    def input_checks(self) -> dict[str, tuple[Any, tuple[int | None, ...]]]:
        """{input: (numpy dtype, dims with None where dynamic)}: what requests must match."""
        import numpy as np

        return {
            spec["name"]: (
                np.dtype(spec["dtype"]),
                tuple(d if isinstance(d, int) and d > 0 else None for d in spec["shape"]),
            )
            for spec in self.inputs
        }

    @property
    def batched(self) -> bool:
        """True when every input's first axis is dynamic (requests can be merged)."""
        return all(
            (spec["shape"] and not isinstance(spec["shape"][0], int))
            or (spec["shape"] and spec["shape"][0] == -1)
            for spec in self.inputs
        )


def _served(
    name: str,
    version: str,
    model: OnnxModel | LlmModel,
    threads: int,
    spinning: bool,
    artifact: Artifact | None = None,
) -> ServedModel:
    if artifact is not None:
        refuse_llm(artifact)
    assert not isinstance(model, LlmModel)  # refused just above
    from slimserve.models.onnx import describe_io, index_bounds, position_limit
    from slimserve.runtime import OrtPredictor, for_artifact

    io = describe_io(model.proto)
    text = None
    if artifact is not None and artifact.manifest.text:
        from slimserve.models.hf import load_tokenizer

        record = artifact.manifest.text
        tokenizer = load_tokenizer(artifact.path / record["tokenizer"])
        task = str(record.get("task") or "feature-extraction")
        unpad = [step for step in artifact.manifest.steps if step.name == "unpad"]
        # Artifacts made before token buckets ran exact counts (bucket 1).
        bucket = int(unpad[-1].config.get("token_bucket", 1)) if unpad else 0
        text = TextInput(tokenizer, int(record["max_length"]), task, bool(unpad), bucket)
    predictor = (
        for_artifact(artifact, threads, spinning)
        if artifact
        else OrtPredictor(model, threads, spinning)
    )
    return ServedModel(
        name,
        version,
        predictor,
        io["inputs"],
        io["outputs"],
        text,
        index_bounds(model.proto),
        position_limit(model.proto),
    )


def _served_llm(name: str, artifact: Artifact, threads: int, config: Any) -> Any:
    """A decoder LM artifact's engine (continuous batching) and tokenizer."""
    from slimserve.models.hf import load_tokenizer
    from slimserve.serve.config import ServeConfig
    from slimserve.serve.llm_engine import LlmEngine, LlmServed

    config = config or ServeConfig()
    model = artifact.model
    assert isinstance(model, LlmModel)
    engine = LlmEngine(
        model.folder,
        threads,
        config.llm_slots,
        config.llm_slot_tokens,
        config.llm_chunk_tokens,
        config.llm_max_queue,
        config.llm_lookup_tokens,
        _prefill_precision(artifact) if config.llm_prefill == "auto" else None,
        config.llm_idle_chunk_tokens,
    )
    return LlmServed(name, engine, load_tokenizer(model.folder), config.llm_max_tokens)


def _prefill_precision(artifact: Artifact) -> str | None:
    """The OpenVINO precision the artifact's prompts run in (None: ONNX Runtime), as the
    run that built it measured; without OpenVINO installed, ONNX Runtime, with a warning."""
    record = artifact.manifest.llm_prefill
    if not record or record.get("runtime") != "openvino":
        return None
    if importlib.util.find_spec("openvino") is None:
        log.warning(
            "%s: its prompts were measured fastest on OpenVINO, which is not installed; they "
            "run in ONNX Runtime (slower to the first token). pip install 'slimserve[openvino]'",
            artifact.path,
        )
        return None
    return str(record["precision"])


def refuse_llm(artifact: Artifact, where: str = "Tensor serving") -> None:
    """A decoder LM or device artifact where only tensor models go: say what serves it."""
    if artifact.model.format in ("litert", "executorch"):
        raise ArtifactError(
            f"'{artifact.path}' holds a device model ({artifact.model.format}: "
            f"{artifact.manifest.runtime} runs it on phones and boards); {where} does not "
            "serve it over V2. Measure it here with slimserve eval / bench / check, and "
            "serve an ONNX build of the same model (export: {format: onnx})."
        )
    if artifact.model.format == "llm":
        raise ArtifactError(
            f"'{artifact.path}' is a decoder LM artifact. {where} takes tensor models; "
            f"serve it with: slimserve serve {artifact.path} (OpenAI /v1/completions and "
            "/v1/chat/completions, Triton's /v2/models/NAME/generate)."
        )


def load_repository(
    path: str | Path,
    threads: int = 2,
    spinning: bool = True,
    llms: dict[str, Any] | None = None,
    config: Any = None,
) -> dict[str, dict[str, ServedModel]]:
    """{model name: {version: ServedModel}}. ``spinning``: whether ORT's threads spin
    between runs (see ``runtime.OrtPredictor``). Decoder LM artifacts go into ``llms``
    (name -> ``serve.chat.LlmServed``, served by the OpenAI generation routes) when it is
    given, and are refused otherwise."""
    from functools import partial

    from slimserve.artifact import is_artifact, load_artifact
    from slimserve.models.onnx import load_onnx

    plain = partial(_served, threads=threads, spinning=spinning)

    def served(name: str, version: str, model: Any, artifact: Artifact | None = None) -> Any:
        if llms is not None and artifact is not None and artifact.model.format == "llm":
            llms[name] = _served_llm(name, artifact, threads, config)
            return None
        return plain(name, version, model, artifact=artifact)

    root = Path(path)
    if root.is_file() and root.suffix == ".onnx":
        return {root.stem: {"1": served(root.stem, "1", load_onnx(root))}}
    if is_artifact(root):
        artifact = load_artifact(root)
        name = artifact.manifest.name
        one = served(name, "1", artifact.model, artifact=artifact)
        return {} if one is None else {name: {"1": one}}
    models: dict[str, dict[str, ServedModel]] = {}
    if root.is_dir():
        from slimserve.artifact import recover

        for old in root.glob(".*.old-*"):  # a save killed between its renames
            recover(root / old.name[1:].rsplit(".old-", 1)[0])
        # Dot-folders are a save's temporary or old copies (artifact.py), never models.
        for folder in sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            if is_artifact(folder):
                artifact = load_artifact(folder)
                one = served(folder.name, "1", artifact.model, artifact=artifact)
                if one is not None:
                    models[folder.name] = {"1": one}
                continue
            versions = {}
            for v in sorted(folder.iterdir()):
                if v.is_dir() and v.name.isdigit() and is_artifact(v):
                    artifact = load_artifact(v)
                    one = served(folder.name, v.name, artifact.model, artifact=artifact)
                    if one is not None:
                        versions[v.name] = one
            if versions:
                models[folder.name] = versions
    if not models and not llms:
        raise ArtifactError(
            f"Nothing to serve at '{path}': give an artifact folder, an .onnx file, or a "
            "folder of artifacts (NAME/ or NAME/VERSION/ with manifest.json)."
        )
    return models
