"""Every 4xx is JSON, framing errors included, and what a client causes never writes a
traceback: requests httptools cannot parse, heads over the limit with more bytes behind
them, bodies over the limit on the OpenAI route, and gRPC calls during shutdown."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import running, start
from tests.serve.test_fastpath import connect, read_responses

INFER = b"/v2/models/digits/infer"
BODY = b'{"inputs": []}'


def answer_and_close(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    ((status, fields, body),) = read_responses(sock, 1)
    sock.settimeout(5)
    assert sock.recv(1) == b""  # and the connection is closed
    return status, fields, body


@pytest.fixture(scope="module")
def digits_server(served_artifact: Path) -> Iterator[str]:
    with running(served_artifact, max_header_bytes=4096, max_body_bytes=4096) as (_, url):
        yield url


FRAMING_ERRORS = {
    "garbage request line": b"HELLO THERE\r\n\r\n",
    "bad content-length": b"POST " + INFER + b" HTTP/1.1\r\nContent-Length: 1x\r\n\r\n" + BODY,
    "two content-lengths": b"POST " + INFER + b" HTTP/1.1\r\nContent-Length: 14\r\n"
    b"Content-Length: 15\r\n\r\n" + BODY,
    "content-length with chunked": b"POST " + INFER + b" HTTP/1.1\r\nContent-Length: 14\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + BODY,
    "bad chunk size": b"POST " + INFER + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("sent", FRAMING_ERRORS.values(), ids=FRAMING_ERRORS.keys())
def test_a_request_httptools_cannot_parse_gets_a_json_400(
    digits_server: str, sent: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), connect(digits_server) as sock:
        sock.sendall(sent)
        status, fields, body = answer_and_close(sock)
    assert status == 400 and fields["content-type"] == "application/json"
    assert "not valid HTTP/1.1" in json.loads(body)["error"]
    assert [r for r in caplog.records if r.exc_info] == []


def test_a_head_over_the_limit_with_more_behind_it_logs_no_traceback(
    digits_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for _ in range(5):
            with connect(digits_server) as sock:
                sock.sendall(b"POST " + INFER + b" HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
                # the client goes on sending after the refusal, as a careless one does
                try:
                    for _ in range(20):
                        sock.sendall(b"b" * 10_000 + b"\r\n")
                except OSError:
                    pass  # the server may close first
                ((status, _, body),) = read_responses(sock, 1)
            assert status == 431 and "4096-byte limit" in json.loads(body)["error"]
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert not any("write_eof" in r.getMessage() for r in caplog.records)


def test_a_body_over_the_limit_on_the_openai_route_is_an_openai_error(
    text_artifact: Path,
) -> None:
    server, thread, url = start(text_artifact, max_body_bytes=4096)
    try:
        texts = json.dumps({"model": "tiny-text", "input": ["word " * 2000]}).encode()
        with connect(url) as sock:  # chunked: no Content-Length to refuse from the head
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n"
                + b"%x\r\n" % len(texts)
                + texts
                + b"\r\n0\r\n\r\n"
            )
            ((status, _, body),) = read_responses(sock, 1)
        assert status == 413
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error" and "4096-byte limit" in error["message"]
        with connect(url) as sock:  # refused from its Content-Length: closed, not read
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 200000000\r\n"
                b"Content-Type: application/json\r\n\r\n" + b"x" * 1000
            )
            status, fields, body = answer_and_close(sock)
        assert status == 413 and fields.get("connection") == "close"
        assert "message" in json.loads(body)["error"]
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_grpc_calls_during_shutdown_are_unavailable(served_artifact: Path) -> None:
    import numpy as np

    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    server, thread, _ = start(served_artifact, grpc_port=0)
    state = server.config.app.state.slimserve  # type: ignore[attr-defined]
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{state.grpc_port}")
        tensor = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        assert client.infer("digits", [tensor]).as_numpy("output").shape == (1, 10)
        state.draining = True  # what the server's shutdown sets before it stops gRPC
        with pytest.raises(InferenceServerException, match="UNAVAILABLE") as refused:
            client.infer("digits", [tensor])
        assert "shutting down; retry" in str(refused.value)
        assert not client.is_server_ready()
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
    assert not thread.is_alive()  # and the drain (http.drain_grpc) let the server stop
