"""Scale-out on existing engines: a Triton model repository, a KServe InferenceService."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from slimserve.core.errors import SlimserveError

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int16": "TYPE_INT16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}


def _tensors(kind: str, specs: list[dict[str, Any]], batched: bool) -> str:
    blocks = []
    for spec in specs:
        if spec["dtype"] not in TRITON_TYPES:
            raise SlimserveError(
                f"{kind} '{spec['name']}' has dtype {spec['dtype']}, which "
                "Triton's onnxruntime backend config cannot express."
            )
        dims = spec["shape"][1:] if batched else spec["shape"]
        dims_text = ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in dims)
        blocks.append(
            f'  {{\n    name: "{spec["name"]}"\n    data_type: {TRITON_TYPES[spec["dtype"]]}\n'
            f"    dims: [ {dims_text} ]\n  }}"
        )
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]"


def triton_repository(
    artifact_path: str | Path, out: str | Path, max_batch_size: int = 32, max_delay_us: int = 2000
) -> Path:
    """OUT/NAME/config.pbtxt (onnxruntime backend, dynamic batching) + OUT/NAME/1/model.onnx."""
    from slimserve.artifact import load_artifact
    from slimserve.serve.repository import refuse_llm

    artifact = load_artifact(artifact_path)
    refuse_llm(artifact, "Triton's onnxruntime backend")
    name = artifact.manifest.name
    io = artifact.manifest.io
    batched = all(s["shape"] and not isinstance(s["shape"][0], int) for s in io["inputs"])
    folder = Path(out) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(artifact_path) / "model.onnx", folder / "1" / "model.onnx")
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
        _tensors("input", io["inputs"], batched),
        _tensors("output", io["outputs"], batched),
        "instance_group [ { kind: KIND_CPU, count: 1 } ]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_delay_us} }}")
    (folder / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return folder


# The schemes KServe's storage initializer downloads from (kserve/storage).
STORAGE_SCHEMES = ("s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf")


def check_storage_uri(uri: str) -> None:
    """Refuse a storage URI KServe could not download the model from."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES or not rest.strip("/"):
        raise SlimserveError(
            f"--storage-uri '{uri}' is not a location KServe downloads models from. Give "
            f"SCHEME://PATH with SCHEME one of {', '.join(STORAGE_SCHEMES)}, e.g. "
            "s3://bucket/models/digits or pvc://claim/models/digits."
        )


def kserve_manifest(
    artifact_path: str | Path, storage_uri: str, cpu: str = "2", memory: str = "2Gi"
) -> str:
    """A KServe InferenceService (V2 protocol, ONNX model format) as YAML."""
    import yaml

    from slimserve.artifact import load_artifact

    check_storage_uri(storage_uri)

    from slimserve.serve.repository import refuse_llm

    artifact = load_artifact(artifact_path)
    refuse_llm(artifact, "KServe's ONNX model format")
    name = artifact.manifest.name.lower().replace("_", "-").replace(".", "-")
    manifest = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {"slimserve/sha256": artifact.manifest.files["model.onnx"].sha256},
        },
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "onnx"},
                    "protocolVersion": "v2",
                    "storageUri": storage_uri,
                    "resources": {
                        "requests": {"cpu": cpu, "memory": memory},
                        "limits": {"cpu": cpu, "memory": memory},
                    },
                }
            }
        },
    }
    text: str = yaml.safe_dump(manifest, sort_keys=False)
    return text
