"""Commands that serve and deploy: serve, loadtest, deploy triton|kserve."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from slimserve.cli.base import app, build_config, console, err_console, print_table, user_errors
from slimserve.core.errors import SlimserveError


@app.command()
@user_errors
def serve(
    path: Path = typer.Argument(..., help="An artifact, an .onnx file, or a folder of artifacts."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="V2 gRPC port (0: any free port)."),
    http_only: bool = typer.Option(False, "--http-only", help="Serve HTTP only (no gRPC)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help="1 disables batching."),
    max_delay_ms: float = typer.Option(2.0, "--max-delay-ms", min=0, help="Batching wait."),
    threads: int = typer.Option(2, "--threads", min=1, help="ONNX Runtime intra-op threads."),
    token: str | None = typer.Option(
        None, "--token", envvar="SLIMSERVE_TOKEN", help="Require 'Authorization: Bearer TOKEN'."
    ),
    max_body_mb: float = typer.Option(64, "--max-body-mb", help="Largest request body (MB)."),
    max_header_kb: float = typer.Option(
        16, "--max-header-kb", help="Largest request head (KB): 431 above."
    ),
    header_timeout: float = typer.Option(
        10, "--header-timeout", help="Seconds to send a request head: 408 after."
    ),
    body_timeout: float = typer.Option(
        60, "--body-timeout", help="Seconds to send a request body: 408 after."
    ),
    max_queue: int | None = typer.Option(
        None,
        "--max-queue",
        min=1,
        help="Requests queued per model: 503 + Retry-After above (default: 2 x --max-batch-size).",
    ),
    max_queue_ms: float | None = typer.Option(
        None,
        "--max-queue-ms",
        min=0,
        help="A latency objective: the model time (ms, measured) a request may find queued "
        "ahead of it; 503 + Retry-After above (default: off, --max-queue alone).",
    ),
    request_timeout: float = typer.Option(
        30,
        "--request-timeout",
        help="Seconds a request may wait in the queue: 504 after (0: no limit).",
    ),
    max_request_rows: int | None = typer.Option(
        None, "--max-request-rows", min=1, help="Rows in one request (default: --max-batch-size)."
    ),
    max_text_chars: int = typer.Option(
        1_000_000, "--max-text-chars", min=1, help="Characters in one text request: 413 above."
    ),
    allow_nonfinite: bool = typer.Option(
        False, "--allow-nonfinite", help="Accept NaN/infinity in float inputs (400 otherwise)."
    ),
    max_batch_tokens: int | None = typer.Option(
        None,
        "--max-batch-tokens",
        min=16,
        help="Text models: most tokens (rows x padded length) per model run, as TEI's.",
    ),
    warmup_tokens: int = typer.Option(
        1024,
        "--warmup-tokens",
        min=0,
        help="Padding-free text models: run each token bucket up to N tokens first (0: off).",
    ),
    truncate: bool = typer.Option(
        True,
        "--truncate/--no-truncate",
        help="Cut texts over the model's token limit (default), or refuse them with 400.",
    ),
    llm_slots: int = typer.Option(
        16, "--llm-slots", min=1, max=256, help="Decoder LMs: sequences decoded together."
    ),
    llm_slot_tokens: int = typer.Option(
        1024,
        "--llm-slot-tokens",
        min=16,
        help="Decoder LMs: KV cache tokens per sequence (prompt + completion).",
    ),
    llm_max_tokens: int = typer.Option(
        512, "--llm-max-tokens", min=1, help="Decoder LMs: most new tokens per request."
    ),
    llm_chunk_tokens: int = typer.Option(
        128,
        "--llm-chunk-tokens",
        min=1,
        help="Decoder LMs: prompt tokens prefilled between two decode steps.",
    ),
    llm_max_queue: int = typer.Option(
        64, "--llm-max-queue", min=0, help="Decoder LMs: sequences waiting for a slot; 429 above."
    ),
    llm_lookup_tokens: int = typer.Option(
        0,
        "--llm-lookup-tokens",
        min=0,
        max=64,
        help="Decoder LMs: prompt lookup decoding, tokens proposed per step from the prompt "
        "(greedy, one sequence decoding; exact). 0: off.",
    ),
    llm_idle_chunk_tokens: int = typer.Option(
        512,
        "--llm-idle-chunk-tokens",
        min=1,
        help="Decoder LMs: prompt tokens prefilled per step while no sequence decodes.",
    ),
    llm_prefill: str = typer.Option(
        "auto",
        "--llm-prefill",
        help="Decoder LMs: where prompts run. auto: where the artifact's recipe run measured "
        "them fastest (OpenVINO or ONNX Runtime); onnxruntime: with the decode steps.",
    ),
    log_format: str = typer.Option("text", "--log-format", help="Server log lines: text or json."),
    access_log: bool = typer.Option(
        False, "--access-log", help="Log every inference request (costs throughput)."
    ),
    ray: bool = typer.Option(False, "--ray", help="Run as a Ray Serve deployment (extra [ray])."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Ray Serve replicas (with --ray)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="An existing Ray cluster (default: start a local one)."
    ),
) -> None:
    """Serve over the Open Inference Protocol V2 (HTTP + gRPC) with dynamic batching;
    decoder LM artifacts over OpenAI's /v1/completions and /v1/chat/completions
    (streaming, continuous batching)."""
    from slimserve.serve import logs
    from slimserve.serve.config import ServeConfig
    from slimserve.serve.server import build_server

    if log_format not in ("text", "json"):
        raise SlimserveError(f"--log-format is text or json, not '{log_format}'.")
    if token is None and os.environ.get("SLIMSERVE_TOKEN", "unset").strip() == "":
        # Click reads an empty variable as unset: that would turn auth off silently.
        raise SlimserveError(
            "SLIMSERVE_TOKEN is set but empty, which would serve without auth: give it a "
            "token, or unset it to serve without one."
        )
    config = build_config(
        "serve",
        ServeConfig,
        host=host,
        port=port,
        grpc_port=None if http_only else grpc_port,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        threads=threads,
        token=token,
        max_body_bytes=int(max_body_mb * 2**20),
        access_log=access_log,
        max_header_bytes=int(max_header_kb * 2**10),
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_queue=max_queue,
        max_queue_ms=max_queue_ms,
        request_timeout_s=request_timeout or None,
        max_request_rows=max_request_rows,
        max_text_chars=max_text_chars,
        reject_nonfinite=not allow_nonfinite,
        truncate_text=truncate,
        max_batch_tokens=max_batch_tokens,
        warmup_tokens=warmup_tokens,
        llm_slots=llm_slots,
        llm_slot_tokens=llm_slot_tokens,
        llm_max_tokens=llm_max_tokens,
        llm_chunk_tokens=llm_chunk_tokens,
        llm_max_queue=llm_max_queue,
        llm_lookup_tokens=llm_lookup_tokens,
        llm_prefill=llm_prefill,
        llm_idle_chunk_tokens=llm_idle_chunk_tokens,
    )
    logs.configure("json" if log_format == "json" else "text")
    if ray:
        from slimserve.serve.ray_serve import run_ray

        run_ray(
            path,
            config,
            replicas,
            ray_address,
            announce=lambda: console.print(
                f"Serving {path} on Ray Serve, {replicas} replica(s), http://{host}:{port}/v2 "
                "(Ctrl+C or SIGTERM stops)",
                highlight=False,
            ),
        )
        return
    if replicas != 1 or ray_address is not None:
        raise SlimserveError("--replicas and --ray-address go with --ray.")
    server = build_server(path, config)
    grpc = "" if http_only else f" and grpc://{host}:{grpc_port}"
    console.print(
        f"Serving {path} on http://{host}:{port}/v2{grpc} (Ctrl+C or SIGTERM stops; "
        "in-flight requests finish first)",
        highlight=False,
    )
    import signal

    # uvicorn drains on SIGTERM, then re-raises it to the previous handler: make that a
    # no-op so a drained shutdown exits 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # Everything loaded so far (modules, models) lives as long as the server: frozen, the
    # collector stops re-scanning those ~200,000 objects in every full collection (~100 ms
    # each, on the event loop). One A/B on the wide MLP at c=32: +7 % requests/s.
    import gc

    gc.collect()
    gc.freeze()
    server.run()


@app.command()
@user_errors
def loadtest(
    url: str = typer.Argument(..., help="Server base URL, e.g. http://127.0.0.1:8000"),
    model: str = typer.Option(..., "--model", "-m", help="Model name."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1),
    requests: int = typer.Option(1000, "--requests", "-n", min=1, help="At most this many."),
    duration: float = typer.Option(60, "--duration", min=0.1, help="At most this long (s)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Rows per request."),
    body_format: str = typer.Option(
        "binary", "--format", help="binary (tensor extension, as tritonclient) or json."
    ),
    token: str | None = typer.Option(None, "--token", envvar="SLIMSERVE_TOKEN"),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a non-loopback target you operate."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    rate: float | None = typer.Option(
        None,
        "--rate",
        min=0.1,
        help="Open loop: send this many requests/s whatever the answers (else closed loop, "
        "--concurrency clients back to back).",
    ),
    route: str = typer.Option(
        "v2",
        "--route",
        help="v2 (the model's V2 infer route), openai (POST /v1/embeddings, --batch "
        "English sentences per request), or chat / completions (streamed generation: "
        "TTFT, inter-token gap, tokens/s).",
    ),
    max_tokens: int = typer.Option(
        64, "--max-tokens", min=1, help="chat / completions: new tokens per request."
    ),
) -> None:
    """Load-test a server: throughput, p50/p95/p99 and errors (bounded); for generation
    routes, time to first token, the gap between tokens and tokens/s."""
    import json

    from slimserve.serve.loadtest import LoadTestConfig, check_target, load_test

    if route not in ("v2", "openai", "chat", "completions"):
        raise SlimserveError(f"--route is v2, openai, chat or completions, not '{route}'.")
    if route in ("chat", "completions"):
        from slimserve.serve.loadtest_stream import stream_load_test

        base = check_target(url, allow_remote)
        args = (base, model, route, concurrency, requests, duration, max_tokens, token)
        streamed = stream_load_test(*args).summary()
        if as_json:
            console.print_json(json.dumps(streamed))
        else:

            def ms(value: float | None) -> str:
                return "-" if value is None else f"{value:,.1f}"

            print_table(
                f"{url} model {model}, {route}, concurrency {concurrency}",
                ("streams", "errors", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "gap p99 ms"),
                [
                    (
                        str(streamed["requests"]),
                        str(streamed["errors"]),
                        f"{streamed['tokens_per_s']:,.1f}",
                        ms(streamed["ttft_p50_ms"]),
                        ms(streamed["ttft_p99_ms"]),
                        ms(streamed["inter_token_p99_ms"]),
                    )
                ],
                left=(),
            )
            if streamed["first_error"]:
                err_console.print(escape(f"first error: {streamed['first_error']}"))
        if streamed["errors"]:
            raise typer.Exit(1)
        return

    if body_format not in ("binary", "json"):
        raise SlimserveError(f"--format is binary or json, not '{body_format}'.")
    config = build_config(
        "loadtest",
        LoadTestConfig,
        concurrency=concurrency,
        requests=requests,
        duration=duration,
        batch=batch,
        format=body_format,
        token=token,
        allow_remote=allow_remote,
        rate=rate,
        route=route,
    )
    summary = load_test(url, model, config).summary()
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        print_table(
            f"{url} model {model}, concurrency {concurrency}",
            ("requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms"),
            [
                (
                    str(summary["requests"]),
                    str(summary["errors"]),
                    f"{summary['requests_per_s']:,.0f}",
                    f"{summary['p50_ms']:.2f}",
                    f"{summary['p95_ms']:.2f}",
                    f"{summary['p99_ms']:.2f}",
                )
            ],
            left=(),
        )
        if summary["first_error"]:
            err_console.print(escape(f"first error: {summary['first_error']}"), highlight=False)
    if summary["errors"]:
        raise typer.Exit(1)


deploy_app = typer.Typer(
    help="Write deployment files for existing serving engines.", no_args_is_help=True
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("triton")
@user_errors
def deploy_triton(
    artifact: Path = typer.Argument(..., help="The artifact to deploy."),
    out: Path = typer.Argument(..., help="Triton model repository folder (created)."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1),
    max_delay_us: int = typer.Option(2000, "--max-delay-us", min=0, help="Batching wait (us)."),
) -> None:
    """A Triton model repository: config.pbtxt (onnxruntime backend) + version 1."""
    from slimserve.serve.deploy import triton_repository

    folder = triton_repository(artifact, out, max_batch_size, max_delay_us)
    console.print(
        f"Triton model: {folder} (tritonserver --model-repository {out})", highlight=False
    )


@deploy_app.command("kserve")
@user_errors
def deploy_kserve(
    artifact: Path = typer.Argument(..., help="The artifact to deploy."),
    storage_uri: str = typer.Option(
        ..., "--storage-uri", help="Where the model folder is uploaded (s3://, gs://, pvc://)."
    ),
    cpu: str = typer.Option("2", "--cpu"),
    memory: str = typer.Option("2Gi", "--memory"),
) -> None:
    """Print a KServe InferenceService manifest (kubectl apply -f -)."""
    from slimserve.serve.deploy import kserve_manifest

    print(kserve_manifest(artifact, storage_uri, cpu, memory), end="")
