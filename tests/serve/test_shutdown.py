"""SIGTERM: stop accepting, finish what was accepted, exit 0 (the real CLI process)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import wait_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_drains_in_flight_requests(served_artifact: Path) -> None:
    port = free_port()
    exe = Path(sys.executable).parent / "slimserve"
    # Requests wait up to 1.5 s for batch company: SIGTERM lands while they are queued.
    process = subprocess.Popen(
        [
            str(exe),
            "serve",
            str(served_artifact),
            "--port",
            str(port),
            "--http-only",
            "--max-batch-size",
            "1024",
            "--max-delay-ms",
            "1500",
            "--log-format",
            "json",
            "--access-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}
                ]
            }
        )

        def infer(_: int) -> int:
            return httpx.post(f"{url}/v2/models/digits/infer", content=body, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(infer, i) for i in range(8)]
            time.sleep(0.5)  # all eight are inside the server, waiting in the batcher
            os.kill(process.pid, signal.SIGTERM)
            codes = [f.result() for f in pending]
        assert codes == [200] * 8
        assert process.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v2/health/live", timeout=2)
        # Structured logs: one JSON object per line, the requests among them.
        assert process.stderr is not None
        events = [json.loads(line) for line in process.stderr.read().decode().splitlines()]
        infers = [e for e in events if e["event"] == "infer"]
        assert len(infers) == 8 and {e["code"] for e in infers} == {200}
        assert infers  # all() of nothing would pass
        assert all(e["model"] == "digits" and e["ms"] > 0 for e in infers)
        assert {"ready", "stopped"} <= {e["event"] for e in events}
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_lets_a_generation_stream_finish(llm_artifact: Path) -> None:
    pytest.importorskip("onnxruntime_genai")
    port = free_port()
    exe = Path(sys.executable).parent / "slimserve"
    # one prompt token per step: the stream is still prefilling when SIGTERM lands
    options = ["--llm-slot-tokens", "512", "--llm-chunk-tokens", "1"]
    process = subprocess.Popen(
        [str(exe), "serve", str(llm_artifact), "--port", str(port), "--http-only", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url)
        message = {"role": "user", "content": "word " * 95}
        body = {"model": "tiny-llm", "messages": [message], "max_tokens": 8, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith("data: ")  # the role: the stream is open
            os.kill(process.pid, signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        finish = json.loads(rest[-2][6:])["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")  # it ended by itself, not cut off
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
