"""Infer requests answered by the server's own HTTP protocol (no ASGI layer): raw HTTP/1.1
as clients may send it (pipelined, chunked, HTTP/1.0), and the same answers as the ASGI
path that serves them when the installed uvicorn is not one it was tested with."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import slimserve as ss
from slimserve.serve import fastpath
from tests.serve.conftest import start


def infer_json(x: np.ndarray) -> bytes:
    inputs = [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    ]
    return json.dumps({"inputs": inputs}).encode()


def post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}"
    return head.encode() + b"\r\n" + body


def chunked(path: str, body: bytes, pieces: int = 3) -> bytes:
    step = -(-len(body) // pieces)
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + encoded
    )


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` responses (status, lower-cased headers, body) off one connection."""
    buffer, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(answers)} responses"
            buffer += chunk
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields["content-length"])
        while len(buffer) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            buffer += chunk
        answers.append((int(lines[0].split()[1]), fields, buffer[:length]))
        buffer = buffer[length:]
    return answers


def connect(url: str) -> socket.socket:
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


@pytest.fixture(params=["own protocol", "ASGI"])
def server(
    request: pytest.FixtureRequest, served_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "ASGI":
        monkeypatch.setattr(fastpath, "supported", lambda: False)
    server, thread, url = start(served_artifact, max_body_bytes=4096)
    yield url
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


def test_the_protocol_is_used_with_this_uvicorn() -> None:
    assert fastpath.supported()  # else the fast path in these tests is never taken


def test_pipelined_requests_are_answered_in_order(server: str, digits_onnx, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = np.ascontiguousarray(digits_test.inputs["input"][:2])
    (expected,) = ss.load_predictor(digits_onnx).predict({"input": x})
    with connect(server) as sock:
        sock.sendall(
            post("/v2/models/digits/infer", infer_json(x[:1]))
            + b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n"
            + post("/v2/models/digits/versions/1/infer", infer_json(x[1:]))
            + post("/v2/models/nope/infer", infer_json(x[1:]))
        )
        answers = read_responses(sock, 4)
    assert [a[0] for a in answers] == [200, 200, 200, 404]
    first, live, second, unknown = (json.loads(a[2]) for a in answers)
    assert live == {"live": True}
    np.testing.assert_allclose(first["outputs"][0]["data"], expected[0], atol=1e-5)
    np.testing.assert_allclose(second["outputs"][0]["data"], expected[1], atol=1e-5)
    assert "Unknown model 'nope'" in unknown["error"]
    assert answers  # all() of nothing would pass
    assert all(a[1]["content-type"] == "application/json" for a in answers)


def test_chunked_body_and_chunked_body_over_the_limit(server: str, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = np.ascontiguousarray(digits_test.inputs["input"][:1])
    with connect(server) as sock:
        sock.sendall(chunked("/v2/models/digits/infer", infer_json(x)))
        ((status, _, body),) = read_responses(sock, 1)
        assert status == 200 and json.loads(body)["outputs"][0]["shape"] == [1, 10]
        big = np.zeros((16, 1, 8, 8), np.float32)  # ~5 KB of JSON: over the 4096-byte limit
        sock.sendall(chunked("/v2/models/digits/infer", infer_json(big), pieces=8))
        ((status, _, body),) = read_responses(sock, 1)
    assert status == 413 and "4096-byte limit" in json.loads(body)["error"]


def test_http10_is_answered_then_closed(server: str, digits_test) -> None:  # type: ignore[no-untyped-def]
    x = np.ascontiguousarray(digits_test.inputs["input"][:1])
    with connect(server) as sock:
        sock.sendall(post("/v2/models/digits/infer", infer_json(x), version="1.0"))
        ((status, fields, _),) = read_responses(sock, 1)
        assert status == 200 and fields.get("connection") == "close"
        assert sock.recv(1) == b""  # the server closed its end


def test_oversized_content_length_is_refused_before_the_body(server: str) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 99999\r\n\r\n"
        )
        ((status, _, body),) = read_responses(sock, 1)  # answered without the body sent
    assert status == 413 and "99999 bytes" in json.loads(body)["error"]


@pytest.mark.parametrize("path", ["own protocol", "ASGI"])
def test_a_failing_model_run_is_a_500_and_the_server_keeps_serving(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx import TensorProto, helper

    if path == "ASGI":
        monkeypatch.setattr(fastpath, "supported", lambda: False)
    # A reshape to 3 elements: ONNX Runtime fails on a request of any other size.
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [3])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "lookup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "lookup.onnx").write_bytes(model.SerializeToString())
    server, thread, url = start(tmp_path / "lookup.onnx")

    def body(rows: int) -> bytes:
        inputs = [{"name": "x", "shape": [rows], "datatype": "FP32", "data": [2.0] * rows}]
        return json.dumps({"inputs": inputs}).encode()

    try:
        with connect(url) as sock:
            sock.sendall(post("/v2/models/lookup/infer", body(2)))
            ((status, fields, failed),) = read_responses(sock, 1)
            sock.sendall(post("/v2/models/lookup/infer", body(3)))  # same connection
            ((ok_status, _, ok),) = read_responses(sock, 1)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
    assert status == 500 and fields["content-type"] == "application/json"
    assert "Model 'lookup' failed" in json.loads(failed)["error"]
    assert ok_status == 200 and json.loads(ok)["outputs"][0]["data"] == [2.0] * 3


@pytest.mark.parametrize("idle_connection", [False, True])
def test_a_batch_leaves_when_every_connection_waits_for_it(
    idle_connection: bool, served_artifact: Path, digits_test
) -> None:  # type: ignore[no-untyped-def]
    """With 4 clients all waiting, no request can join: the batch goes without waiting
    out max_delay_ms. One more open connection that could still send keeps it waiting."""
    x = np.ascontiguousarray(digits_test.inputs["input"][:1])
    server, thread, url = start(served_artifact, max_batch_size=32, max_delay_ms=1500)
    clients = [connect(url) for _ in range(4)]
    idle = connect(url) if idle_connection else None
    try:
        for sock in clients:  # a first round, so the batcher has seen company
            sock.sendall(post("/v2/models/digits/infer", infer_json(x)))
        for sock in clients:
            read_responses(sock, 1)
        started = time.perf_counter()
        for sock in clients:
            sock.sendall(post("/v2/models/digits/infer", infer_json(x)))
        statuses = [read_responses(sock, 1)[0][0] for sock in clients]
        elapsed = time.perf_counter() - started
    finally:
        for sock in [*clients, *([idle] if idle else [])]:
            sock.close()
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
    assert statuses == [200] * 4
    if idle_connection:
        assert elapsed >= 1.4  # someone could still send: the delay is waited out
    else:
        assert elapsed < 1.0


def test_a_client_gone_before_its_answer_no_longer_counts_as_waiting(
    served_artifact: Path, digits_test
) -> None:  # type: ignore[no-untyped-def]
    """A hangs up while its request waits for company; B then sends while C sits idle.
    C could still send, so B's batch must wait out the delay, not leave as if A, B and C
    all waited."""
    x = np.ascontiguousarray(digits_test.inputs["input"][:1])
    request = post("/v2/models/digits/infer", infer_json(x))
    server, thread, url = start(served_artifact, max_batch_size=32, max_delay_ms=1500)
    a, b, c = (connect(url) for _ in range(3))
    try:
        for sock in (a, b, c):  # a first round: 3 requests, so batches wait for company
            sock.sendall(request)
        for sock in (a, b, c):
            read_responses(sock, 1)
        a.sendall(request)
        time.sleep(0.2)
        a.close()
        time.sleep(0.2)
        started = time.perf_counter()
        b.sendall(request)
        ((status, _, _),) = read_responses(b, 1)
        waited = time.perf_counter() - started
    finally:
        for sock in (a, b, c):
            sock.close()
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
    assert status == 200
    assert waited >= 0.8  # the rest of the 1.5 s delay that A's arrival started
