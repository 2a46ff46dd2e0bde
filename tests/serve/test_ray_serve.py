"""`slimserve serve --ray`: the V2 app as a Ray Serve deployment (local Ray)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from slimserve.cli import app
from tests.serve.conftest import wait_ready
from tests.serve.test_shutdown import free_port

runner = CliRunner()


def test_ray_options_need_ray(served_artifact: Path) -> None:
    result = runner.invoke(app, ["serve", str(served_artifact), "--replicas", "2"])
    assert result.exit_code == 2 and "go with --ray" in result.output
    if importlib.util.find_spec("ray") is not None:
        result = runner.invoke(app, ["serve", str(served_artifact), "--ray"])
        assert result.exit_code == 2 and "--http-only" in result.output


@pytest.mark.slow
def test_ray_serve_deployment_answers_v2_infer(served_artifact: Path, digits_onnx) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("ray")
    import tritonclient.http as httpclient

    import slimserve as ss

    port = free_port()
    exe = Path(sys.executable).parent / "slimserve"
    command = [str(exe), "serve", str(served_artifact), "--ray", "--http-only"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--replicas", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"127.0.0.1:{port}"
    try:
        wait_ready(process, f"http://{url}", seconds=180)
        client = httpclient.InferenceServerClient(url)
        x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype("f4")
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        (expected,) = ss.load_predictor(digits_onnx).predict({"input": x})
        for _ in range(4):  # the proxy spreads these over both replicas
            got = client.infer("digits", [tensor]).as_numpy("output")
            np.testing.assert_allclose(got, expected, atol=1e-5)
        bad = httpx.post(f"http://{url}/v2/models/nope/infer", content=b"{}")
        assert bad.status_code == 404 and "Unknown model" in bad.json()["error"]
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_ray_serve_replicas_stream_chat_from_an_llm_artifact(llm_artifact: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("onnxruntime_genai")
    openai = pytest.importorskip("openai")
    port = free_port()
    exe = Path(sys.executable).parent / "slimserve"
    command = [str(exe), "serve", str(llm_artifact), "--ray", "--http-only", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--llm-slot-tokens", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", seconds=180)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        messages = [{"role": "user", "content": "hello"}]
        whole = api.chat.completions.create(
            model="tiny-llm", messages=messages, max_tokens=8, temperature=0
        )
        chunks = api.chat.completions.create(
            model="tiny-llm", messages=messages, max_tokens=8, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=90) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_without_ray_nothing_is_announced(
    served_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if [ray] were not installed
    result = runner.invoke(app, ["serve", str(served_artifact), "--ray", "--http-only"])
    assert result.exit_code == 2 and "slimserve[ray]" in result.output
    assert f"Serving {served_artifact}" not in result.output
