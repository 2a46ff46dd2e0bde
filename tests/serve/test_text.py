"""Text in, embeddings out: a text artifact carries its tokenizer, and the V2 server
takes raw strings (BYTES) from tritonclient, batching requests of different lengths."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("transformers")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

import slimserve as ss  # noqa: E402
from slimserve.models.hf import load_tokenizer, tokenize  # noqa: E402
from tests.serve.conftest import TEXTS, start  # noqa: E402


@pytest.fixture(scope="module")
def text_server(text_artifact: Path) -> Iterator[tuple[str, str]]:
    server, thread, url = start(text_artifact, grpc_port=0, max_batch_size=64, max_delay_ms=30)
    state = server.config.app.state.slimserve  # type: ignore[attr-defined]
    yield url, f"127.0.0.1:{state.grpc_port}"
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


def expected_embeddings(artifact: Path, texts: list[str]) -> np.ndarray:
    loaded = ss.load_artifact(artifact)
    feeds = tokenize(load_tokenizer(artifact / "tokenizer"), texts)
    (out,) = ss.load_predictor(loaded.model).predict(feeds)
    return out  # type: ignore[no-any-return]


def test_artifact_carries_its_tokenizer(text_artifact: Path, tiny_bert: Path) -> None:
    artifact = ss.load_artifact(text_artifact)  # hashes verified, tokenizer files included
    assert artifact.manifest.text is not None
    assert artifact.manifest.text["pooling"] == "mean+l2"
    assert any(name.startswith("tokenizer/") for name in artifact.manifest.files)
    original = tokenize(load_tokenizer(tiny_bert), TEXTS)
    carried = tokenize(load_tokenizer(text_artifact / "tokenizer"), TEXTS)
    for key in original:
        np.testing.assert_array_equal(original[key], carried[key])


def test_tritonclient_sends_strings_and_gets_embeddings(
    text_server: tuple[str, str], text_artifact: Path
) -> None:
    http_url, grpc_url = text_server
    expected = expected_embeddings(text_artifact, TEXTS)
    client = httpclient.InferenceServerClient(http_url)
    meta = client.get_model_metadata("tiny-text")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    strings = np.array([t.encode() for t in TEXTS], dtype=object)
    for binary in (True, False):
        tensor = httpclient.InferInput("text", [3], "BYTES")
        tensor.set_data_from_numpy(strings, binary_data=binary)
        got = client.infer("tiny-text", [tensor]).as_numpy("embeddings")
        np.testing.assert_allclose(got, expected, atol=1e-4)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    tensor = grpcclient.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(strings)
    np.testing.assert_allclose(
        grpc.infer("tiny-text", [tensor]).as_numpy("embeddings"), expected, atol=1e-4
    )


def test_requests_of_different_lengths_batch_together(
    text_server: tuple[str, str], text_artifact: Path
) -> None:
    http_url, _ = text_server
    expected = expected_embeddings(text_artifact, TEXTS)

    def one(index: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(http_url)
        tensor = httpclient.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([TEXTS[index % 3].encode()], dtype=object))
        return client.infer("tiny-text", [tensor]).as_numpy("embeddings")[0]  # type: ignore[no-any-return]

    before = _runs(http_url)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(24)))
    for index, got in enumerate(results):  # padding inside a batch changes nothing
        np.testing.assert_allclose(got, expected[index % 3], atol=1e-4)
    assert _runs(http_url) - before < 24, "no two requests were merged"


def _runs(url: str) -> float:
    metrics = httpx.get(f"http://{url}/metrics").text
    line = next(m for m in metrics.splitlines() if m.startswith("slimserve_batch_size_count"))
    return float(line.split()[-1])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}, "shape"),
        ({"name": "text", "shape": [1], "datatype": "BYTES", "data": [1]}, "list of strings"),
        ({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}, "needs 2"),
    ],
)
def test_bad_text_requests_are_400(text_server: tuple[str, str], spec: dict, message: str) -> None:  # type: ignore[type-arg]
    http_url, _ = text_server
    body = json.dumps({"inputs": [spec]})
    response = httpx.post(f"http://{http_url}/v2/models/tiny-text/infer", content=body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_non_utf8_text_is_400(text_server: tuple[str, str]) -> None:
    http_url, _ = text_server
    raw = len(b"\xff\xfe").to_bytes(4, "little") + b"\xff\xfe"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"http://{http_url}/v2/models/tiny-text/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400 and "not UTF-8" in response.json()["error"]


def test_loadtest_sends_sentences_to_text_models(text_server: tuple[str, str]) -> None:
    from slimserve.serve.loadtest import LoadTestConfig, load_test

    http_url, _ = text_server
    for body in ("binary", "json"):
        result = load_test(
            f"http://{http_url}",
            "tiny-text",
            LoadTestConfig(concurrency=4, requests=40, format=body),
        )
        assert result.errors == 0 and result.requests == 40, result.first_error
