"""The V2 server: HTTP/REST (FastAPI on uvicorn) and, on the same event loop, gRPC.

Health, metadata, infer (JSON and the binary tensor extension), Prometheus metrics,
bearer-token auth and body-size limits. Every HTTP error is ``{"error": "..."}`` with a
4xx code, as tritonclient expects. The infer route, the hot path, is plain ASGI in
``_Front``: FastAPI's routing and request objects cost more than the model at batch 1.
HTTP and gRPC share one batcher per model, so their requests are merged together.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
(``Request``, imported inside ``create_app`` so the module imports without the extra).
"""

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimserve.core.errors import first_line, require
from slimserve.serve.protocol import (
    NUMPY_TO_V2,
    ProtocolError,
    encode_response,
    parse_request,
    v2_datatype,
)

HEADER_LENGTH = b"inference-header-content-length"
log = logging.getLogger("slimserve.serve")


class ServeConfig(BaseModel):
    """How the server runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 unless told.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="V2 gRPC port (0: any free port; None: no gRPC)."
    )
    max_batch_size: int = Field(32, ge=1, description="Rows per merged model run.")
    max_delay_ms: float = Field(2.0, ge=0, description="How long a request waits for company.")
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads.")
    token: str | None = Field(None, description="Bearer token required on every request.")
    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="Largest request body.")
    max_request_rows: int | None = Field(
        None,
        ge=1,
        description="Largest batch in one request (None: max_batch_size, as Triton refuses "
        "a request over the model's max_batch_size).",
    )
    access_log: bool = Field(False, description="Log every inference request (one line each).")
    max_header_bytes: int = Field(
        16 * 2**10, ge=1024, description="Largest request head (line + headers): 431 above."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time to send a request's head once it began: 408 after."
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Time to send a request's body once its head arrived: 408 after."
    )
    max_queue: int | None = Field(
        None,
        ge=1,
        description="Requests queued or running per model: 503 + Retry-After above "
        "(None: 2 x max_batch_size, two batches).",
    )
    request_timeout_s: float | None = Field(
        30.0, gt=0, description="Longest a request waits in the queue before 504 (None: none)."
    )
    max_text_chars: int = Field(
        1_000_000, ge=1, description="Characters in one text request, all strings: 413 above."
    )
    reject_nonfinite: bool = Field(
        True, description="Answer 400 to float inputs holding NaN or infinity."
    )

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "the token is empty (SLIMSERVE_TOKEN= set to nothing?), which would turn "
                "auth off silently: give a token, or unset it to serve without one"
            )
        return value

    @property
    def queue_limit(self) -> int:
        """Requests a model may have queued or running."""
        return self.max_queue or 2 * self.max_batch_size

    @property
    def request_rows(self) -> int:
        """The largest batch one request may carry."""
        return self.max_request_rows or self.max_batch_size

    @property
    def ort_spinning(self) -> bool:
        """Let ORT's threads spin between runs only without batching. Spinning answers
        back-to-back one-request runs sooner, but with batching the threads would spin
        while the event loop parses the next batch's requests on the same cores. With
        spinning off in both servers, one run of benchmarks/serve.py on the 2-core
        machine took the batching server from 2,276 to 4,585 req/s at concurrency 32
        and the unbatched one from 2,775 to 1,750 req/s at concurrency 16."""
        return self.max_batch_size == 1


@dataclass
class ServerState:
    """What every endpoint shares: the models, their batchers, metrics, the config."""

    models: dict[str, dict[str, Any]]
    batchers: dict[tuple[str, str], Any]
    metrics: Any
    config: ServeConfig
    grpc_port: int | None = None
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _latest: dict[str, Any] = field(default_factory=dict)
    # The HTTP fast path's open connections (uvicorn's set) and how many of them wait for
    # an answer: when all do, no request can join a batch (see no_more_company).
    http_connections: Any = None
    http_waiting: int = 0
    tokenizer_pool: Any = None  # one thread: text requests are tokenized off the loop

    def __post_init__(self) -> None:
        # A request without a version gets the highest: found once, not per request.
        for name, versions in self.models.items():
            if versions:
                self._latest[name] = versions[
                    max(versions, key=lambda v: int(v) if v.isdigit() else 0)
                ]

    def no_more_company(self) -> bool:
        """True when every open HTTP connection waits for an answer, so no request can
        arrive before one is sent: a batch stops waiting for company instead of waiting
        out max_delay_ms (docs/serving.md has the demo CNN at concurrency 8, ~2,000 ->
        ~5,900 req/s). Never with gRPC on: its clients are not counted."""
        connections = self.http_connections
        return (
            connections is not None
            and self.grpc_port is None
            and self.config.grpc_port is None
            and self.http_waiting >= len(connections)
        )

    def find(self, name: str, version: str | None) -> Any:
        """The served model, or a LookupError naming what is served."""
        if not version:
            latest = self._latest.get(name)
            if latest is not None:
                return latest
        versions = self.models.get(name)
        if versions is None:
            raise LookupError(f"Unknown model '{name}'. Served: {', '.join(self.models)}.")
        if not version:
            version = max(versions, key=lambda v: int(v) if v.isdigit() else 0)
        if version not in versions:
            raise LookupError(f"Model '{name}' has no version '{version}'.")
        return versions[version]

    def observe(self, model: str, code: int, seconds: float, protocol: str) -> None:
        """Count one inference request (labelled children cached: labels() takes a lock)."""
        key = (model, code)
        children = self._children.get(key)
        if children is None:
            metrics = self.metrics
            children = (
                metrics.requests.labels(model, str(code)),
                metrics.latency.labels(model),
                metrics.errors.labels(model) if code >= 400 else None,
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None:
            children[2].inc()
        if self.config.access_log:
            log.info(
                "infer",
                extra={
                    "model": model,
                    "code": code,
                    "ms": round(seconds * 1000, 3),
                    "protocol": protocol,
                },
            )

    async def infer(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked inputs through the model's batcher (raw text tokenized first, in the
        tokenizer's thread)."""
        import asyncio

        if self.is_text(model, inputs):
            loop = asyncio.get_running_loop()
            inputs = await loop.run_in_executor(self.tokenizer_pool, self.tokenized, model, inputs)
        outputs: dict[str, np.ndarray] = await self.batchers[(model.name, model.version)].infer(
            self.checked(model, inputs)
        )
        return outputs

    @staticmethod
    def is_text(model: Any, inputs: dict[str, np.ndarray]) -> bool:
        return model.text is not None and TEXT_INPUT in inputs

    def tokenized(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A text request's token arrays (run off the event loop: tokenizing 1 MB of text
        takes long enough to stall every other request)."""
        return tokenize_request(model, inputs, self.config)

    def checked(self, model: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` as the model takes them, or a ProtocolError."""
        return check_inputs(model, inputs, self.config)


def tensor_metadata(spec: dict[str, Any]) -> dict[str, Any]:
    """V2 metadata of one input/output: dynamic dimensions are -1."""
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]
    return {"name": spec["name"], "datatype": v2_datatype(spec["dtype"]), "shape": shape}


TEXT_INPUT = "text"


def input_metadata(model: Any) -> list[dict[str, Any]]:
    """What clients send: raw strings for text models (token ids are accepted too)."""
    if model.text is not None:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    return [tensor_metadata(s) for s in model.inputs]


def tokenize_request(
    model: Any, inputs: dict[str, np.ndarray], config: ServeConfig
) -> dict[str, Any]:
    """A text model's 'text' input (BYTES, one string per row) as token arrays, padded to
    the longest string of the request."""
    from slimserve.models.hf import tokenize

    max_rows = config.request_rows
    if len(inputs) != 1:
        raise ProtocolError(
            f"Send either '{TEXT_INPUT}' alone or the token inputs {list(model.input_checks)}."
        )
    strings = inputs[TEXT_INPUT]
    if strings.dtype != object:
        raise ProtocolError(f"Input '{TEXT_INPUT}' must be BYTES (UTF-8 strings).")
    if strings.ndim == 2 and strings.shape[1] == 1:
        strings = strings[:, 0]
    if strings.ndim != 1 or len(strings) == 0:
        raise ProtocolError(
            f"Input '{TEXT_INPUT}' must have shape [-1] (one string per row), "
            f"got {list(strings.shape)}."
        )
    if len(strings) > max_rows:
        raise ProtocolError(f"Batch of {len(strings)} rows is over the {max_rows}-row limit.")
    size = sum(len(s) for s in strings)
    if size > config.max_text_chars:  # bytes bound characters from above
        chars = sum(
            len(s.decode("utf-8", "replace")) if isinstance(s, bytes) else len(s) for s in strings
        )
        if chars > config.max_text_chars:
            raise TooLarge(
                f"The request holds {chars} characters of text, over the "
                f"{config.max_text_chars}-character limit (--max-text-chars). Send fewer or "
                "shorter texts per request."
            )
    try:
        texts = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in strings]
    except UnicodeDecodeError:
        raise ProtocolError(f"Input '{TEXT_INPUT}' holds bytes that are not UTF-8.") from None
    encoded = tokenize(model.text.tokenizer, texts, model.text.max_length)
    if size > LARGE_TEXT:
        from slimserve.runtime import trim_memory

        trim_memory()
    return {k: v for k, v in encoded.items() if k in model.input_checks}


class TooLarge(ProtocolError):
    """A request over a size limit: answered 413."""


LARGE_TEXT = 1 << 20  # bytes of text after which freed memory is handed back to the OS


def create_app(models: dict[str, dict[str, Any]], config: ServeConfig | None = None) -> Any:
    """The ASGI app serving ``models`` ({name: {version: ServedModel}}); when
    ``config.grpc_port`` is set, the gRPC service starts and stops with it."""
    require("fastapi", "serve", "Serving")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    from slimserve.core.version import __version__
    from slimserve.serve.batching import Batcher, BatchLimits
    from slimserve.serve.metrics import Metrics

    config = config or ServeConfig()
    metrics = Metrics.create()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-ort")
    limits = BatchLimits(
        config.max_batch_size, config.max_delay_ms, config.queue_limit, config.request_timeout_s
    )
    batchers = {
        (name, version): Batcher(model, limits, executor, metrics)
        for name, versions in models.items()
        for version, model in versions.items()
    }
    state = ServerState(models, batchers, metrics, config)
    state.tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-tok")
    for batcher in batchers.values():
        batcher.no_more_company = state.no_more_company

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        grpc_server = None
        if config.grpc_port is not None:
            from slimserve.serve.grpc import create_grpc_server

            grpc_server, state.grpc_port = create_grpc_server(state, config.host, config.grpc_port)
            await grpc_server.start()
        log.info(
            "ready",
            extra={"models": sorted(models), "grpc_port": state.grpc_port},
        )
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=10)
            log.info("stopped")

    app = FastAPI(
        title="slimserve",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.slimserve = state

    def error(status: int, message: str) -> Response:
        import orjson

        return Response(
            orjson.dumps({"error": message}), status_code=status, media_type="application/json"
        )

    def ok(body: Any) -> Response:
        import orjson

        return Response(orjson.dumps(body), media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        default = exc.status_code == 404 and exc.detail == "Not Found"
        message = f"No route {request.url.path}" if default else exc.detail
        return error(exc.status_code, str(message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error(400, f"Bad request: {exc.errors()[0].get('msg', 'invalid')}")

    def find(name: str, version: str | None) -> Any:
        try:
            return state.find(name, version)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    def metadata(model: Any) -> dict[str, Any]:
        return {
            "name": model.name,
            "versions": list(state.models[model.name]),
            "platform": "onnxruntime_onnx",
            "inputs": input_metadata(model),
            "outputs": [tensor_metadata(s) for s in model.outputs],
        }

    @app.get("/v2/health/live")
    async def live() -> Response:
        return ok({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return ok({"ready": True})

    @app.get("/v2")
    async def server_metadata() -> Response:
        return ok(
            {
                "name": "slimserve",
                "version": __version__,
                "extensions": ["binary_tensor_data", "model_repository_metadata"],
            }
        )

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Response:
        return ok(metadata(find(name, None)))

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> Response:
        return ok(metadata(find(name, version)))

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        find(name, None)
        return ok({"name": name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str) -> Response:
        find(name, version)
        return ok({"name": name, "ready": True})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return _Front(app, state)


def infer_target(method: str, path: str) -> tuple[str, str | None] | None:
    """(model, version) of a V2 infer URL, else None."""
    if method != "POST" or not path.startswith("/v2/models/") or not path.endswith("/infer"):
        return None
    parts = path.split("/")  # '', 'v2', 'models', NAME, ['versions', V,] 'infer'
    if len(parts) == 5:
        return parts[3], None
    if len(parts) == 7 and parts[4] == "versions":
        return parts[3], parts[5]
    return None


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Any, status: int, message: str) -> None:
    import orjson

    await _respond(
        send, status, orjson.dumps({"error": message}), [(b"content-type", b"application/json")]
    )


def refusal(
    config: ServeConfig, headers: dict[bytes, bytes], check_token: bool = True
) -> tuple[int, str] | None:
    """(status, message) when a request is refused from its head alone: a missing or
    wrong bearer token, or a Content-Length over the body limit; else None."""
    if check_token and config.token is not None:
        supplied = headers.get(b"authorization", b"")
        if not hmac.compare_digest(supplied, f"Bearer {config.token}".encode()):
            return 401, "Missing or wrong bearer token (Authorization: Bearer ...)."
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > config.max_body_bytes:
        return (
            413,
            f"Request body of {int(length)} bytes is over the {config.max_body_bytes}-byte limit.",
        )
    return None


class _Front:
    """Plain ASGI in front of FastAPI: token and body-size checks for every route, and the
    whole infer route (a Starlette middleware or route costs a task, a stream copy and a
    request object per request)."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = app.state  # uvicorn users reach .state.slimserve as on FastAPI
        self.server = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        path = scope.get("path", "")
        refused = refusal(self.server.config, headers, check_token=path != "/v2/health/live")
        if refused is not None:
            await _error(send, *refused)
            return
        target = infer_target(scope["method"], path)
        if target is None:
            await self.app(scope, receive, send)
            return
        await self._infer(target, headers, receive, send)

    async def _infer(
        self, target: tuple[str, str | None], headers: dict[bytes, bytes], receive: Any, send: Any
    ) -> None:
        limit = self.server.config.max_body_bytes
        chunks, size = [], 0
        while True:  # the body may arrive in pieces (chunked, or large)
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _error(send, 413, f"Request body is over the {limit}-byte limit.")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status, payload, response_headers = await answer_infer(
            self.server, target, headers.get(HEADER_LENGTH), body
        )
        await _respond(send, status, payload, response_headers)


Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, body, headers


async def answer_infer(
    server: ServerState, target: tuple[str, str | None], header_length: bytes | None, body: bytes
) -> Answer:
    """One V2 infer request, whatever carried it: (status, body, headers) of the answer.
    ``header_length`` is the Inference-Header-Content-Length header's value, if sent."""
    import asyncio

    future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

    def reply(answer: Answer) -> None:
        if not future.done():
            future.set_result(answer)

    reply_infer(server, target, header_length, body, reply)
    return await future


def reply_infer(
    server: ServerState,
    target: tuple[str, str | None],
    header_length: bytes | None,
    body: bytes,
    reply: Callable[[Answer], None],
) -> None:
    """``answer_infer`` without a coroutine: ``reply`` gets the answer, at once for a
    request refused before the model, else when its batch has run. The HTTP fast path
    uses this, so a request costs no task and no future (~8 us each on this machine)."""
    import orjson

    started = time.perf_counter()
    try:
        model = server.find(*target)
    except LookupError as exc:
        reply((404, orjson.dumps({"error": str(exc)}), [JSON_TYPE]))
        return
    try:
        if header_length is not None and not header_length.isdigit():
            raise ProtocolError("Inference-Header-Content-Length must be an integer.")
        parsed = parse_request(body, int(header_length) if header_length is not None else None)
    except ProtocolError as exc:
        server.observe(model.name, 400, time.perf_counter() - started, "http")
        reply((400, orjson.dumps({"error": str(exc)}), [JSON_TYPE]))
        return

    def done(outputs: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
        answer = _answer_outputs(model, parsed, outputs, error)
        server.observe(model.name, answer[0], time.perf_counter() - started, "http")
        reply(answer)

    def submit(inputs: dict[str, np.ndarray]) -> None:
        try:
            checked = server.checked(model, inputs)
        except Exception as exc:
            done(None, exc)
            return
        server.batchers[(model.name, model.version)].submit(checked, done)

    if not server.is_text(model, parsed.inputs):
        submit(parsed.inputs)
        return
    import asyncio

    tokenizing = asyncio.get_running_loop().run_in_executor(
        server.tokenizer_pool, server.tokenized, model, parsed.inputs
    )

    def tokenized(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        error = future.exception()
        if error is not None:
            done(None, error)
        else:
            submit(future.result())

    tokenizing.add_done_callback(tokenized)


def answer_error(model: Any, error: BaseException) -> Answer:
    """The answer to a request that failed with ``error`` (status from error_status)."""
    return _answer_outputs(model, None, None, error)


def _answer_outputs(
    model: Any, parsed: Any, outputs: dict[str, np.ndarray] | None, error: BaseException | None
) -> Answer:
    import orjson

    if error is not None:
        status, message = error_status(model, error)
        headers = [JSON_TYPE, RETRY_AFTER] if status == 503 else [JSON_TYPE]
        return status, orjson.dumps({"error": message}), headers
    assert outputs is not None
    try:
        if parsed.outputs is not None:
            unknown = [o for o in parsed.outputs if o not in outputs]
            if unknown:
                raise ProtocolError(
                    f"Unknown output(s) {unknown}; the model gives {list(outputs)}."
                )
            outputs = {k: outputs[k] for k in parsed.outputs}
        payload, binary_header = encode_response(model.name, model.version, parsed, outputs)
    except ProtocolError as exc:
        return 400, orjson.dumps({"error": str(exc)}), [JSON_TYPE]
    except Exception as exc:
        return _answer_outputs(model, parsed, None, exc)
    if binary_header is None:
        return 200, payload, [JSON_TYPE]
    return (
        200,
        payload,
        [(b"content-type", b"application/octet-stream"), (HEADER_LENGTH, b"%d" % binary_header)],
    )


JSON_TYPE = (b"content-type", b"application/json")
RETRY_AFTER = (b"retry-after", b"1")
_LOGGED_FAILURES: set[tuple[str, str, str]] = set()


def error_status(model: Any, error: BaseException) -> tuple[int, str]:
    """(HTTP status, message) for a request that failed: 400/413 for a bad request, 503
    for a full queue, 504 past its deadline, 500 when the model failed. A model failure's
    traceback is logged once per distinct failure, not once per request."""
    from slimserve.serve.batching import DeadlineExceeded, QueueFull

    if isinstance(error, TooLarge):
        return 413, str(error)
    if isinstance(error, ProtocolError):
        return 400, str(error)
    if isinstance(error, QueueFull):
        return 503, str(error)
    if isinstance(error, DeadlineExceeded):
        return 504, str(error)
    key = (model.name, type(error).__name__, first_line(error)[:200])
    if key not in _LOGGED_FAILURES:
        if len(_LOGGED_FAILURES) < 1000:  # bounded: distinct failures, not requests
            _LOGGED_FAILURES.add(key)
        log.error(
            "model run failed (logged once; later requests failing alike are only counted)",
            exc_info=error,
            extra={"model": model.name},
        )
    return 500, f"Model '{model.name}' failed: {first_line(error)}"


def check_inputs(
    model: Any, inputs: dict[str, np.ndarray], config: ServeConfig
) -> dict[str, np.ndarray]:
    """Names, datatypes, shapes and values against the model's metadata (ids inside the
    table they index, floats finite); errors name the input."""
    max_rows = config.request_rows
    expected = model.input_checks
    if inputs.keys() != expected.keys():
        missing = [n for n in expected if n not in inputs]
        extra = [n for n in inputs if n not in expected]
        raise ProtocolError(
            f"Model '{model.name}' takes inputs {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
            + "."
        )
    rows = set()
    for name, array in inputs.items():
        dtype, fixed = expected[name]
        if array.dtype != dtype:
            got = NUMPY_TO_V2.get(array.dtype.name, array.dtype.name)
            raise ProtocolError(f"Input '{name}' must be {v2_datatype(dtype.name)}, got {got}.")
        if array.ndim != len(fixed) or any(
            f is not None and f != actual for f, actual in zip(fixed, array.shape, strict=True)
        ):
            wanted = [d if d is not None else -1 for d in fixed]
            raise ProtocolError(
                f"Input '{name}' must have shape {wanted}, got {list(array.shape)}."
            )
        if array.ndim:
            rows.add(array.shape[0])
    if len(rows) > 1:
        raise ProtocolError(f"Inputs disagree on the batch size: {sorted(rows)}.")
    if rows and max(rows) > max_rows:
        raise ProtocolError(f"Batch of {max(rows)} rows is over the {max_rows}-row limit.")
    if rows and min(rows) == 0:
        raise ProtocolError("An empty batch (0 rows) has nothing to infer.")
    for name, bound in model.index_bounds.items():
        ids = inputs.get(name)
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= bound):
            raise ProtocolError(
                f"Input '{name}' holds ids outside [0, {bound}): the table it indexes has "
                f"{bound} rows (min {int(ids.min())}, max {int(ids.max())})."
            )
    if config.reject_nonfinite:
        for name, array in inputs.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ProtocolError(
                    f"Input '{name}' holds NaN or infinity; the model's outputs would be "
                    "meaningless. Send finite values."
                )
    return {k: np.ascontiguousarray(v) for k, v in inputs.items()}
