"""A real V2 server on 127.0.0.1 (free port), in a background thread."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

import slimserve as ss
from slimserve.serve.config import ServeConfig
from slimserve.serve.server import bound_port, build_server
from tests.conftest import manifest_for


@pytest.fixture(scope="session")
def served_artifact(tmp_path_factory: pytest.TempPathFactory, digits_onnx: ss.OnnxModel) -> Path:
    folder = tmp_path_factory.mktemp("repo") / "digits"
    ss.save_artifact(folder, digits_onnx, manifest_for(digits_onnx))
    return folder


@pytest.fixture(scope="session")
def llm_artifact(tiny_llama: Path, prose: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder LM artifact (the tiny random Llama built in float32), named tiny-llm."""
    recipe = ss.parse_recipe(
        {
            "name": "tiny-llm",
            "model": {"hf": str(tiny_llama)},
            "data": {"eval": {"text": str(prose), "max_length": 32, "samples": 1}},
            "steps": [{"quantize": {"mode": "llm", "weights": "fp32"}}],
            "goal": {"metric": "kl_divergence", "max_drop": 1.0},
            "bench": {"repeats": 3},
        }
    )
    return ss.run_recipe(recipe, tmp_path_factory.mktemp("llm-serve")).artifact.path


def start(path: Path, **options: object) -> tuple[object, threading.Thread, str]:
    server = build_server(path, ServeConfig(port=0, **options))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    return server, thread, f"127.0.0.1:{bound_port(server)}"


@contextlib.contextmanager
def running(path: Path, **options: object) -> Iterator[tuple[object, str]]:
    """A server on ``path`` for the duration of a ``with`` block: (server, host:port)."""
    server, thread, url = start(path, **options)
    try:
        yield server, url
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def infer_once(artifact: Path, model: str, inputs: np.ndarray, name: str = "input") -> np.ndarray:
    """Start a server on ``artifact``, send one tritonclient HTTP request, stop it."""
    import tritonclient.http as httpclient

    server, thread, url = start(artifact)
    try:
        client = httpclient.InferenceServerClient(url)
        tensor = httpclient.InferInput(name, list(inputs.shape), "FP32")
        tensor.set_data_from_numpy(inputs)
        result: np.ndarray = client.infer(model, [tensor]).as_numpy("output")
        return result
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server_url(served_artifact: Path) -> Iterator[str]:
    server, thread, url = start(served_artifact, max_batch_size=32, max_delay_ms=5)
    yield url
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


def wait_ready(process: subprocess.Popen[bytes], url: str, seconds: float = 60) -> None:
    """Until ``url`` (a server in ``process``) answers /v2/health/ready, or fail with its
    stderr when it exits or takes longer than ``seconds``."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"server exited with {process.returncode}: {stderr[-2000:]}")
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.2)


TEXTS = [
    "Short.",
    "A sentence of middling length about serving models.",
    "A much longer sentence that goes on and on about quantization, pruning, export "
    "and every other thing this toolkit does before a model is served.",
]


def build_text_artifact(model: Path, out: Path, name: str, steps: list[object]) -> Path:
    """``steps`` run on the Hugging Face model at ``model``, with its tokenizer: raw text
    in, embeddings out; evaluated on TEXTS."""
    texts = out / "texts.txt"
    texts.write_text("\n".join(TEXTS * 4))
    recipe = ss.parse_recipe(
        {
            "name": name,
            "model": {"hf": str(model)},
            "data": {"eval": {"text": str(texts)}},
            "steps": steps,
            "goal": {"metric": "cosine_mean"},
            "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
        }
    )
    ss.run_recipe(recipe, out)
    return out / name


@pytest.fixture(scope="session")
def text_artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT exported and fused."""
    steps: list[object] = [{"export": {}}, {"fuse": {}}]
    return build_text_artifact(tiny_bert, tmp_path_factory.mktemp("text"), "tiny-text", steps)
