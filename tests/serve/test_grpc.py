"""The V2 gRPC service driven by tritonclient.grpc."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")

import slimserve as ss  # noqa: E402
from tests.serve.conftest import start  # noqa: E402


def grpc_address(server: object) -> str:
    state = server.config.app.state.slimserve  # type: ignore[attr-defined]
    return f"127.0.0.1:{state.grpc_port}"


@pytest.fixture(scope="module")
def grpc_server(served_artifact):  # type: ignore[no-untyped-def]
    server, thread, http_url = start(
        served_artifact, grpc_port=0, max_batch_size=64, max_delay_ms=20
    )
    yield server, http_url
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def grpc_url(grpc_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield grpc_address(grpc_server[0])


def test_health_metadata_and_infer(grpc_url: str, digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(grpc_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "slimserve"
    meta = client.get_model_metadata("digits")
    assert meta.inputs[0].name == "input" and list(meta.inputs[0].shape) == [-1, 1, 8, 8]
    x = np.ascontiguousarray(digits_test.inputs["input"][:8])
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits", [tensor], outputs=[grpcclient.InferRequestedOutput("output")])
    (expected,) = ss.load_predictor(digits_onnx).predict({"input": x})
    np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)


def test_errors_are_grpc_statuses(grpc_url: str) -> None:
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(grpc_url)
    bad = grpcclient.InferInput("input", [1, 1, 8, 7], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 8, 7), "f4"))
    with pytest.raises(InferenceServerException, match="must have shape"):
        client.infer("digits", [bad])
    with pytest.raises(InferenceServerException, match="Unknown model 'nope'"):
        client.get_model_metadata("nope")


def test_grpc_and_http_requests_share_one_batcher(grpc_server, digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    """Concurrent gRPC and HTTP requests are merged into the same model runs."""
    import concurrent.futures

    import httpx
    import tritonclient.http as httpclient

    server, http_url = grpc_server
    x = np.ascontiguousarray(digits_test.inputs["input"][:1])
    (expected,) = ss.load_predictor(digits_onnx).predict({"input": x})

    def over_grpc() -> np.ndarray:
        client = grpcclient.InferenceServerClient(grpc_address(server))
        tensor = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("digits", [tensor]).as_numpy("output")  # type: ignore[no-any-return]

    def over_http() -> np.ndarray:
        client = httpclient.InferenceServerClient(http_url)
        tensor = httpclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("digits", [tensor]).as_numpy("output")  # type: ignore[no-any-return]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        jobs = [pool.submit(over_grpc if i % 2 else over_http) for i in range(32)]
        for job in jobs:
            np.testing.assert_allclose(job.result(), expected, atol=1e-5)
    metrics = httpx.get(f"http://{http_url}/metrics").text
    line = next(m for m in metrics.splitlines() if m.startswith("slimserve_batch_size_count"))
    runs = float(line.split()[-1])
    assert runs < 32, f"32 concurrent requests ran as {runs} model runs: nothing was merged"
    assert 'slimserve_requests_total{code="200",model="digits"}' in metrics


def test_grpc_token_auth(served_artifact) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.utils import InferenceServerException

    server, thread, _ = start(served_artifact, grpc_port=0, token="s3cret")
    try:
        client = grpcclient.InferenceServerClient(grpc_address(server))
        assert client.is_server_live()  # liveness probes need no token
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.get_model_metadata("digits")
        wrong = {"authorization": "Bearer nope"}
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.is_model_ready("digits", headers=wrong)
        good = {"authorization": "Bearer s3cret"}
        assert client.get_model_metadata("digits", headers=good).name == "digits"
        tensor = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), "f4"))
        assert client.infer("digits", [tensor], headers=good).as_numpy("output").shape == (1, 10)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
