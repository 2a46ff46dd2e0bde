"""The V2 server over HTTP/REST on uvicorn and, on the same event loop, gRPC.

Health, metadata, infer (JSON and the binary tensor extension), Prometheus metrics,
bearer-token auth and body-size limits. Every HTTP error is ``{"error": "..."}`` with a
4xx code, as tritonclient expects. Inference never goes through FastAPI: the infer and
OpenAI routes are plain ASGI in ``_Front`` (FastAPI's routing and request objects cost
more than the model at batch 1), or the uvicorn fast path (``fastpath.py``) where it
runs; FastAPI answers the rest (health, metadata, metrics).
HTTP and gRPC share one batcher per model, so their requests are merged together.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
(``Request``, imported inside ``create_app`` so the module imports without the extra).
"""

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slimserve.core.errors import require
from slimserve.serve.config import ServeConfig
from slimserve.serve.infer import HEADER_LENGTH, answer_infer, input_metadata, tensor_metadata
from slimserve.serve.repository import ServedModel
from slimserve.serve.state import ServerState

log = logging.getLogger("slimserve.serve")


def create_app(
    models: dict[str, dict[str, ServedModel]],
    config: ServeConfig | None = None,
    llms: dict[str, Any] | None = None,
) -> Any:
    """The ASGI app serving ``models`` ({name: {version: ServedModel}}) and the decoder
    LMs ``llms`` ({name: serve.chat.LlmServed}, OpenAI generation routes); when
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
        config.max_batch_size,
        config.max_delay_ms,
        config.queue_limit,
        config.request_timeout_s,
        config.max_batch_tokens,
        config.max_queue_ms,
    )
    batchers = {
        (name, version): Batcher(model, limits, executor, metrics)
        for name, versions in models.items()
        for version, model in versions.items()
    }
    state = ServerState(models, batchers, metrics, config, llms=llms or {})
    metrics.watch_engines(state.llms)
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
            extra={"models": sorted([*models, *state.llms]), "grpc_port": state.grpc_port},
        )
        try:
            yield
        finally:
            if grpc_server is not None:
                await drain_grpc(state, grpc_server, GRPC_GRACE_S)
            for llm in state.llms.values():  # streams in flight ended above by uvicorn
                llm.engine.close()
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

    def find(name: str, version: str | None) -> ServedModel:
        try:
            return state.find(name, version)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None

    def metadata(model: ServedModel) -> dict[str, Any]:
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


GRPC_GRACE_S = 10.0  # how long gRPC calls in flight at shutdown may take to finish


async def drain_grpc(state: ServerState, server: Any, grace: float) -> None:
    """Stop gRPC without cancelling a call: new calls get UNAVAILABLE (the code clients
    retry), those in flight finish (up to ``grace`` seconds), then the port closes."""
    import asyncio
    import time

    state.draining = True
    deadline = time.monotonic() + grace
    while state.grpc_in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await server.stop(grace=max(0.0, deadline - time.monotonic()))


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


async def _refuse(send: Any, path: str, status: int, message: str) -> None:
    """A refusal from the head or a body over the limit, in the route's error shape
    (OpenAI's on ``/v1/``, V2's elsewhere). A 413 closes the connection, so the body it
    refused is not read to its end."""
    headers = [(b"content-type", b"application/json")]
    if status == 413:
        headers.append((b"connection", b"close"))
    if path.startswith("/v1/"):  # OpenAI clients read OpenAI's error shape
        from slimserve.serve.openai import error_body

        await _respond(send, status, error_body(status, message), headers)
        return
    import orjson

    await _respond(send, status, orjson.dumps({"error": message}), headers)


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
            await _refuse(send, path, *refused)
            return
        if path.startswith("/v1/"):
            await self._openai(scope["method"], path, receive, send)
            return
        if scope["method"] == "POST" and path.startswith("/v2/models/"):
            name, _, route = path[len("/v2/models/") :].partition("/")
            if name in self.server.llms and route in ("generate", "generate_stream"):
                await self._generate(path, receive, send, v2=name)
                return
        target = infer_target(scope["method"], path)
        if target is None:
            await self.app(scope, receive, send)
            return
        await self._infer(target, headers, receive, send)

    async def _read_body(self, receive: Any, send: Any, path: str) -> bytes | None:
        """The whole body, or None once the client left or the body went over the limit
        (then a 413 was sent, in the route's error shape)."""
        limit = self.server.config.max_body_bytes
        chunks, size = [], 0
        while True:  # the body may arrive in pieces (chunked, or large)
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, path, 413, f"Request body is over the {limit}-byte limit.")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _infer(
        self, target: tuple[str, str | None], headers: dict[bytes, bytes], receive: Any, send: Any
    ) -> None:
        body = await self._read_body(receive, send, "")
        if body is None:
            return
        status, payload, response_headers = await answer_infer(
            self.server, target, headers.get(HEADER_LENGTH), body
        )
        await _respond(send, status, payload, response_headers)

    async def _generate(self, path: str, receive: Any, send: Any, v2: str | None = None) -> None:
        """An OpenAI generation route, or (``v2``: the model's name) Triton's generate
        extension (``serve.generate_http``)."""
        from slimserve.serve.generate_http import answer_generate, answer_v2_generate

        body = await self._read_body(receive, send, path)
        if body is None:
            return
        if v2 is None:
            await answer_generate(self.server, path, receive, send, body)
        else:
            await answer_v2_generate(self.server, v2, path, receive, send, body)

    async def _openai(self, method: str, path: str, receive: Any, send: Any) -> None:
        """The OpenAI-compatible routes (``serve.openai``), errors in OpenAI's shape."""
        from slimserve.serve import chat_request, openai

        json = [(b"content-type", b"application/json")]
        if (method, path) == ("GET", openai.MODELS_PATH):
            await _respond(send, 200, openai.models_body(self.server), json)
        elif (method, path) == ("POST", openai.EMBEDDINGS_PATH):
            body = await self._read_body(receive, send, path)
            if body is not None:
                status, payload = await openai.answer_embeddings(self.server, body)
                await _respond(send, status, payload, json)
        elif method == "POST" and path in (chat_request.CHAT_PATH, chat_request.COMPLETIONS_PATH):
            await self._generate(path, receive, send)
        else:
            message = (
                f"No route {method} {path}: this server offers POST /v1/embeddings, "
                "/v1/completions, /v1/chat/completions and GET /v1/models."
            )
            await _respond(send, 404, openai.error_body(404, message), json)
