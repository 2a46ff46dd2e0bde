"""The V2 HTTP server driven by the official tritonclient, and raw HTTP for errors."""

from __future__ import annotations

import concurrent.futures
import json
import os

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tritonclient = pytest.importorskip("tritonclient.http")


@pytest.fixture
def client(server_url: str):  # type: ignore[no-untyped-def]
    return tritonclient.InferenceServerClient(server_url)


def images(count: int, digits_test) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.ascontiguousarray(digits_test.inputs["input"][:count])


def test_health_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.get_server_metadata()["name"] == "slimserve"
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("digits", "1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_onnx_runtime(client, digits_onnx, digits_test, binary: bool) -> None:  # type: ignore[no-untyped-def]
    import slimserve as ss

    x = images(16, digits_test)
    tensor = tritonclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [tritonclient.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer("digits", [tensor], outputs=outputs)
    (expected,) = ss.load_predictor(digits_onnx).predict({"input": x})
    np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)


def test_default_binary_call_without_outputs(client, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = images(3, digits_test)
    tensor = tritonclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # binary, no Content-Type, outputs not listed
    assert client.infer("digits", [tensor]).as_numpy("output").shape == (3, 10)


def test_concurrent_requests_are_batched(server_url: str, client, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = images(1, digits_test)

    def one(_: int) -> np.ndarray:
        local = tritonclient.InferenceServerClient(server_url)
        tensor = tritonclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x)
        return local.infer("digits", [tensor]).as_numpy("output")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    assert all(np.allclose(r, results[0], atol=1e-5) for r in results)
    metrics = httpx.get(f"http://{server_url}/metrics").text
    sums = [line for line in metrics.splitlines() if line.startswith("slimserve_batch_size_sum")]
    counts = [
        line for line in metrics.splitlines() if line.startswith("slimserve_batch_size_count")
    ]
    assert float(sums[0].split()[-1]) > float(counts[0].split()[-1])  # some runs merged rows
    assert 'slimserve_requests_total{code="200",model="digits"}' in metrics


def post(url: str, body: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"http://{url}/v2/models/digits/infer", content=body, headers=headers)


def request(shape: list[int], datatype: str = "FP32", name: str = "input", data=None) -> str:  # type: ignore[no-untyped-def]
    count = int(np.prod(shape))
    return json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "data": data if data is not None else [0.0] * count,
                }
            ]
        }
    )


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (request([1, 1, 8, 8], name="pixels"), 400, "missing ['input']; unknown ['pixels']"),
        (request([1, 1, 8, 7]), 400, "must have shape [-1, 1, 8, 8], got [1, 1, 8, 7]"),
        (request([1, 1, 8, 8], datatype="INT64", data=[0] * 64), 400, "must be FP32, got INT64"),
        (request([1, 1, 8, 8], data=[0.0] * 10), 400, "needs 64 elements but 'data' has 10"),
        (request([1, 1, 8, 8], datatype="COMPLEX"), 400, "datatype 'COMPLEX' is not one of"),
        (json.dumps({"inputs": "x"}), 400, "with an 'inputs' list"),
        # found by the fuzz test: an unhashable datatype once raised a 500
        (b'{"inputs":[{"name":"","shape":[],"datatype":[]}]}', 400, "datatype [] is not one of"),
    ],
)
def test_bad_requests_get_4xx_json_errors(server_url: str, body, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    response = post(server_url, body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_unknown_model_and_route(server_url: str) -> None:
    response = httpx.post(
        f"http://{server_url}/v2/models/nope/infer", content=request([1, 1, 8, 8])
    )
    assert response.status_code == 404 and "Unknown model 'nope'" in response.json()["error"]
    assert httpx.get(f"http://{server_url}/v2/models/../../etc/passwd").status_code == 404
    assert "error" in httpx.get(f"http://{server_url}/nowhere").json()


def test_binary_header_length_errors(server_url: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    body = header + np.zeros(64, "f4").tobytes()
    ok = post(server_url, body, {"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200
    short = post(server_url, body[:-8], {"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "ends before" in short.json()["error"]
    wrong = post(server_url, body, {"Inference-Header-Content-Length": "99999"})
    assert wrong.status_code == 400


def test_oversized_body_is_413(served_artifact) -> None:  # type: ignore[no-untyped-def]
    from tests.serve.conftest import start

    server, thread, url = start(served_artifact, max_body_bytes=4096)
    try:
        response = post(url, request([64, 1, 8, 8]))
        assert response.status_code == 413 and "limit" in response.json()["error"]
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_token_auth(served_artifact) -> None:  # type: ignore[no-untyped-def]
    from tests.serve.conftest import start

    server, thread, url = start(served_artifact, token="s3cret")
    try:
        assert post(url, request([1, 1, 8, 8])).status_code == 401
        bad = post(url, request([1, 1, 8, 8]), {"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and "bearer token" in bad.json()["error"]
        good = post(url, request([1, 1, 8, 8]), {"Authorization": "Bearer s3cret"})
        assert good.status_code == 200
        assert httpx.get(f"http://{url}/v2/health/live").status_code == 200
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
input_specs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "other", ""]) | st.integers(),
        "shape": st.lists(st.integers(-2, 70), max_size=5) | json_values,
        "datatype": st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "nope"]) | json_values,
        "data": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=70) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 300)})
        | json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(input_specs, max_size=3).map(lambda specs: json.dumps({"inputs": specs}).encode()),
)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=bodies, header=st.none() | st.integers(-10, 400).map(str) | st.just("abc"))
def test_fuzzed_bodies_never_crash_the_server(server_url: str, body: bytes, header) -> None:  # type: ignore[no-untyped-def]
    headers = {"Inference-Header-Content-Length": header} if header is not None else {}
    response = post(server_url, body, headers)
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)
    assert httpx.get(f"http://{server_url}/v2/health/live").status_code == 200
