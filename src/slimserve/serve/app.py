"""The V2 HTTP/REST server (FastAPI on uvicorn): health, metadata, infer (JSON and the
binary tensor extension), Prometheus metrics, bearer-token auth and body-size limits.
Every error is ``{"error": "..."}`` with a 4xx code, as tritonclient expects.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
(``Request``, imported inside ``create_app`` so the module imports without the extra).
"""

import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slimserve.errors import require
from slimserve.serve.protocol import (
    NUMPY_TO_V2,
    ProtocolError,
    encode_response,
    parse_request,
    v2_datatype,
)

HEADER_LENGTH = "inference-header-content-length"


class ServeConfig(BaseModel):
    """How the server runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 unless told.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0: any free port).")
    max_batch_size: int = Field(32, ge=1, description="Rows per merged model run.")
    max_delay_ms: float = Field(2.0, ge=0, description="How long a request waits for company.")
    threads: int = Field(2, ge=1, description="ONNX Runtime intra-op threads.")
    token: str | None = Field(None, description="Bearer token required on every request.")
    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="Largest request body.")
    max_request_rows: int = Field(1024, ge=1, description="Largest batch in one request.")


@dataclass
class _State:
    models: dict[str, dict[str, Any]]
    batchers: dict[tuple[str, str], Any]
    metrics: Any
    config: ServeConfig


def create_app(models: dict[str, dict[str, Any]], config: ServeConfig | None = None) -> Any:
    """The ASGI app serving ``models`` ({name: {version: ServedModel}})."""
    require("fastapi", "serve", "Serving")
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    from slimserve import __version__
    from slimserve.serve.batching import Batcher
    from slimserve.serve.metrics import Metrics

    config = config or ServeConfig()
    metrics = Metrics.create()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-ort")
    batchers = {
        (name, version): Batcher(
            model, config.max_batch_size, config.max_delay_ms, executor, metrics
        )
        for name, versions in models.items()
        for version, model in versions.items()
    }
    state = _State(models, batchers, metrics, config)
    app = FastAPI(title="slimserve", version=__version__, docs_url=None, redoc_url=None)
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
        versions = state.models.get(name)
        if versions is None:
            raise HTTPException(404, f"Unknown model '{name}'. Served: {', '.join(state.models)}.")
        if version is None:
            version = max(versions, key=lambda v: int(v) if v.isdigit() else 0)
        if version not in versions:
            raise HTTPException(404, f"Model '{name}' has no version '{version}'.")
        return versions[version]

    def metadata(model: Any) -> dict[str, Any]:
        def tensor(spec: dict[str, Any]) -> dict[str, Any]:
            shape = [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]
            return {"name": spec["name"], "datatype": v2_datatype(spec["dtype"]), "shape": shape}

        return {
            "name": model.name,
            "versions": list(state.models[model.name]),
            "platform": "onnxruntime_onnx",
            "inputs": [tensor(s) for s in model.inputs],
            "outputs": [tensor(s) for s in model.outputs],
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

    async def infer(name: str, version: str | None, request: Request) -> Response:
        started = time.perf_counter()
        model = find(name, version)
        body = await request.body()
        if len(body) > config.max_body_bytes:
            return error(413, f"Request body is over the {config.max_body_bytes}-byte limit.")
        code = 200
        try:
            header = request.headers.get(HEADER_LENGTH)
            if header is not None and not header.isdigit():
                raise ProtocolError("Inference-Header-Content-Length must be an integer.")
            parsed = parse_request(body, int(header) if header is not None else None)
            inputs = _check_inputs(model, parsed.inputs, config.max_request_rows)
            outputs = await state.batchers[(model.name, model.version)].infer(inputs)
            if parsed.outputs is not None:
                unknown = [o for o in parsed.outputs if o not in outputs]
                if unknown:
                    raise ProtocolError(
                        f"Unknown output(s) {unknown}; the model gives {list(outputs)}."
                    )
                outputs = {k: outputs[k] for k in parsed.outputs}
            payload, header_length = encode_response(model.name, model.version, parsed, outputs)
        except ProtocolError as exc:
            code = 400
            metrics.errors.labels(name).inc()
            return error(400, str(exc))
        finally:
            metrics.requests.labels(name, str(code)).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - started)
        if header_length is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    @app.post("/v2/models/{name}/infer")
    async def model_infer(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def model_version_infer(name: str, version: str, request: Request) -> Response:
        return await infer(name, version, request)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return _Guard(app, config)


class _Guard:
    """Token and body-size checks as plain ASGI middleware (Starlette's
    BaseHTTPMiddleware costs a task and a stream copy per request)."""

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app = app
        self.config = config
        self.state = app.state
        self.expected = f"Bearer {config.token}".encode() if config.token is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or ())
            problem = None
            guarded = self.expected is not None and scope.get("path") != "/v2/health/live"
            supplied = headers.get(b"authorization", b"")
            if guarded and not hmac.compare_digest(supplied, self.expected or b""):
                problem = (401, "Missing or wrong bearer token (Authorization: Bearer ...).")
            length = headers.get(b"content-length", b"")
            if problem is None and length.isdigit() and int(length) > self.config.max_body_bytes:
                problem = (
                    413,
                    f"Request body of {int(length)} bytes is over the "
                    f"{self.config.max_body_bytes}-byte limit.",
                )
            if problem is not None:
                import orjson

                body = orjson.dumps({"error": problem[1]})
                await send(
                    {
                        "type": "http.response.start",
                        "status": problem[0],
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _check_inputs(
    model: Any, inputs: dict[str, np.ndarray], max_rows: int
) -> dict[str, np.ndarray]:
    """Names, datatypes and shapes against the model's metadata; errors name the input."""
    expected = {spec["name"]: spec for spec in model.inputs}
    missing = [n for n in expected if n not in inputs]
    extra = [n for n in inputs if n not in expected]
    if missing or extra:
        raise ProtocolError(
            f"Model '{model.name}' takes inputs {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
            + "."
        )
    rows = set()
    for name, array in inputs.items():
        spec = expected[name]
        if array.dtype.name != spec["dtype"]:
            got = NUMPY_TO_V2.get(array.dtype.name, array.dtype.name)
            raise ProtocolError(f"Input '{name}' must be {v2_datatype(spec['dtype'])}, got {got}.")
        shape = spec["shape"]
        fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
        if array.ndim != len(shape) or any(
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
    return {k: np.ascontiguousarray(v) for k, v in inputs.items()}
