"""Load test, and deployment files for Triton and KServe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slimserve.cli import app
from slimserve.core.errors import SlimserveError
from slimserve.serve.loadtest import LoadTestConfig, check_target, load_test

runner = CliRunner()


def test_loadtest_counts_and_bounds(server_url: str) -> None:
    result = load_test(
        f"http://{server_url}", "digits", LoadTestConfig(concurrency=4, requests=200)
    )
    summary = result.summary()
    assert summary["requests"] == 200 and summary["errors"] == 0
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    bounded = load_test(
        f"http://{server_url}",
        "digits",
        LoadTestConfig(concurrency=2, requests=10**6, duration=0.5),
    )
    assert bounded.seconds < 5 and bounded.requests < 10**6


def test_loadtest_command_json(server_url: str) -> None:
    for body in ("binary", "json"):
        command = ["loadtest", f"http://{server_url}", "--model", "digits", "-c", "2", "-n", "20"]
        result = runner.invoke(app, [*command, "--format", body, "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert summary["requests"] == 20 and summary["errors"] == 0
    result = runner.invoke(app, [*command, "--format", "xml"])
    assert result.exit_code == 2 and "binary or json" in result.output


def test_loadtest_sends_the_token(served_artifact: Path) -> None:
    from tests.serve.conftest import start

    server, thread, url = start(served_artifact, token="s3cret")
    try:
        result = runner.invoke(app, ["loadtest", f"http://{url}", "-m", "digits", "-n", "5"])
        assert result.exit_code == 2 and "401" in result.output  # metadata refused
        summary = load_test(
            f"http://{url}", "digits", LoadTestConfig(concurrency=2, requests=10, token="s3cret")
        )
        assert summary.errors == 0 and summary.requests == 10
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_loadtest_counts_failures_and_reconnects_after_close() -> None:
    """A server that fails every inference, closes after each answer, and once in a
    while hangs up without answering: every request is counted, none hangs the run."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    metadata = json.dumps(
        {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]}
    ).encode()
    seen = []

    class Flaky(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection, then close

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(metadata)))
            self.end_headers()
            self.wfile.write(metadata)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(1)
            if len(seen) % 5 == 0:
                return  # hang up without a response
            body = b'{"error": "model failed"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = load_test(
            f"http://127.0.0.1:{server.server_port}",
            "m",
            LoadTestConfig(concurrency=2, requests=20, duration=30),
        )
    finally:
        server.shutdown()
    assert result.requests == 20 and result.errors == 20 and len(seen) == 20
    assert result.seconds < 10
    assert result.first_error is not None and "HTTP 500" in result.first_error


def test_an_open_loop_survives_a_send_that_fails_unexpectedly(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A send that raised something unforeseen used to lose its connection slot: a later
    # request found none to pop (IndexError) and the whole load test died.
    from slimserve.serve import loadtest

    real, calls = loadtest._send, [0]

    async def flaky(*args: object) -> object:
        calls[0] += 1
        if calls[0] % 5 == 0:
            raise RuntimeError("a bug of the client's own")
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loadtest, "_send", flaky)
    monkeypatch.setattr(loadtest, "OPEN_LOOP_CONNECTIONS", 2)
    result = load_test(f"http://{server_url}", "digits", LoadTestConfig(rate=400, requests=100))
    assert result.requests == 100 and result.errors == 20
    assert "RuntimeError: a bug of the client's own" in (result.first_error or "")


def test_loadtest_refuses_remote_targets_and_unknown_models(server_url: str) -> None:
    with pytest.raises(SlimserveError, match="not a loopback address"):
        check_target("http://192.0.2.10:8000", allow_remote=False)
    assert check_target("localhost:8000", allow_remote=False) == "http://localhost:8000"
    result = runner.invoke(app, ["loadtest", f"http://{server_url}", "--model", "nope", "-n", "1"])
    assert result.exit_code == 2 and "metadata returned 404" in result.output


def test_triton_repository_parses_with_tritons_protobuf(
    served_artifact: Path, tmp_path: Path
) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result = runner.invoke(
        app,
        [
            "deploy",
            "triton",
            str(served_artifact),
            str(tmp_path / "repo"),
            "--max-batch-size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "repo" / "digits"
    assert (folder / "1" / "model.onnx").read_bytes() == (
        served_artifact / "model.onnx"
    ).read_bytes()
    config = text_format.Parse(
        (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert config.input[0].name == "input" and list(config.input[0].dims) == [1, 8, 8]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.output[0].dims) == [10]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def test_kserve_manifest(served_artifact: Path) -> None:
    result = runner.invoke(
        app, ["deploy", "kserve", str(served_artifact), "--storage-uri", "s3://bucket/digits"]
    )
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load(result.output)
    assert manifest["kind"] == "InferenceService"
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "s3://bucket/digits"


@pytest.mark.parametrize("uri", ["bucket/digits", "ftp://host/digits", "s3://", "digits"])
def test_kserve_refuses_a_storage_uri_it_cannot_download(served_artifact: Path, uri: str) -> None:
    result = runner.invoke(app, ["deploy", "kserve", str(served_artifact), "--storage-uri", uri])
    assert result.exit_code != 0 and "apiVersion" not in result.output
    assert "not a location KServe downloads models from" in result.output
    assert "s3://bucket/models/digits" in result.output


def test_serve_refuses_an_unknown_log_format(served_artifact: Path) -> None:
    result = runner.invoke(app, ["serve", str(served_artifact), "--log-format", "xml"])
    assert result.exit_code == 2 and "text or json" in result.output


def test_batching_servers_let_ort_threads_sleep_between_runs(
    served_artifact: Path, tmp_path: Path, digits_onnx: object
) -> None:
    import slimserve as ss
    from slimserve.serve.config import ServeConfig
    from slimserve.serve.repository import load_repository

    def spinning(options: object) -> str:
        try:
            return str(options.get_session_config_entry("session.intra_op.allow_spinning"))  # type: ignore[attr-defined]
        except RuntimeError:  # not set: ORT's default, spinning
            return "default"

    onnx_file = tmp_path / "digits.onnx"
    onnx_file.write_bytes(digits_onnx.to_bytes())  # type: ignore[attr-defined]
    for batch_size, expected in ((32, "0"), (1, "default")):
        config = ServeConfig(max_batch_size=batch_size)
        for path in (served_artifact, onnx_file):
            (served,) = load_repository(path, config.threads, config.ort_spinning).values()
            session = served["1"].predictor.session  # type: ignore[attr-defined]
            assert spinning(session.get_session_options()) == expected
    # Everywhere else (bench, eval) ORT keeps its default.
    default = ss.load_predictor(served_artifact).session  # type: ignore[attr-defined]
    assert spinning(default.get_session_options()) == "default"


def test_serving_onnx_never_imports_torch(served_artifact: Path, tmp_path: Path) -> None:
    """`slimserve serve` on an artifact or a .onnx file starts without torch (~2 s and
    ~200,000 objects at import); `import slimserve` itself is lazy."""
    onnx_file = tmp_path / "digits.onnx"
    onnx_file.write_bytes((served_artifact / "model.onnx").read_bytes())
    script = (
        "import sys\n"
        "import slimserve, slimserve.cli\n"
        "from slimserve.serve.config import ServeConfig\n"
        "from slimserve.serve.server import build_server\n"
        "for path in sys.argv[1:]:\n"
        "    build_server(path, ServeConfig(port=0))\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(served_artifact), str(onnx_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_taken_port_is_named_before_the_server_announces_itself(served_artifact: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["serve", str(served_artifact), "--port", str(port), "--http-only"]
        )
    assert result.exit_code == 2, result.output
    assert (
        f"The HTTP port {port} on 127.0.0.1 is taken" in result.output and "--port" in result.output
    )
    assert f"Serving {served_artifact}" not in result.output


def test_grpc_without_tritonclient_is_named_before_serving(
    served_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tritonclient", None)  # as if not installed
    result = CliRunner().invoke(app, ["serve", str(served_artifact), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "slimserve[serve]" in result.output and "--http-only" in result.output
    assert f"Serving {served_artifact}" not in result.output
