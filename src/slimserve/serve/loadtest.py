"""A bounded V2 load test: C concurrent clients, at most N requests and S seconds,
loopback only unless allowed; binary tensors as tritonclient sends them, or JSON.

Each client is one keep-alive HTTP/1.1 connection, a bare asyncio protocol, with the
request bytes built once: a general client (httpx) tops out near 300 requests/s on two
cores, below what the server under test does, so the tester would measure itself; and
on one machine every CPU cycle the client spends is one the server lacks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slimserve.core.errors import SlimserveError, require


class LoadTestConfig(BaseModel):
    """How hard and how long a load test pushes (every bound is a hard stop)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(8, ge=1, description="Closed loop: clients sending back to back.")
    requests: int = Field(1000, ge=1, description="At most this many requests.")
    duration: float = Field(60.0, gt=0, description="At most this many seconds.")
    batch: int = Field(1, ge=1, description="Rows per request.")
    format: Literal["binary", "json"] = Field(
        "binary", description="binary (the tensor extension, as tritonclient) or json."
    )
    token: str | None = Field(None, description="Bearer token sent with every request.")
    allow_remote: bool = Field(False, description="Allow a non-loopback target you operate.")
    rate: float | None = Field(
        None,
        gt=0,
        description="Open loop: requests/s sent on schedule whatever the answers "
        "(concurrency is then unused).",
    )
    route: Literal["v2", "openai"] = Field(
        "v2",
        description="v2: POST /v2/models/M/infer; openai: POST /v1/embeddings with `batch` "
        "English sentences per request (a text feature-extraction model).",
    )


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None
    ok_latencies_ms: list[float] = field(default_factory=list)  # answered 200
    codes: dict[str, int] = field(default_factory=dict)  # HTTP status (or error) -> count
    # Open loop: answered-200 latencies from when the request went out on its connection
    # (the server's own time, queue included), beside those from its scheduled time.
    ok_sent_latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        ok = np.array(self.ok_latencies_ms) if self.ok_latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": self.requests / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "first_error": self.first_error,
            "ok": len(self.ok_latencies_ms),
            "ok_per_s": len(self.ok_latencies_ms) / self.seconds if self.seconds else 0.0,
            "ok_p99_ms": float(np.percentile(ok, 99)),
            "ok_sent_p99_ms": (
                float(np.percentile(self.ok_sent_latencies_ms, 99))
                if self.ok_sent_latencies_ms
                else None
            ),
            "codes": dict(sorted(self.codes.items())),
        }

    def record(self, started: float, status: str, detail: str | None) -> None:
        elapsed = (time.perf_counter() - started) * 1e3
        self.latencies_ms.append(elapsed)
        self.requests += 1
        self.codes[status] = self.codes.get(status, 0) + 1
        if detail is None:
            self.ok_latencies_ms.append(elapsed)
        else:
            self.errors += 1
            self.first_error = self.first_error or detail


def check_target(url: str, allow_remote: bool) -> str:
    """The base URL, refusing anything but loopback unless ``allow_remote``."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    host = parsed.hostname or ""
    if not allow_remote:
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except socket.gaierror as exc:
            raise SlimserveError(f"Cannot resolve '{host}': {exc}.") from None
        if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
            raise SlimserveError(
                f"'{host}' is not a loopback address; load tests go to this machine only "
                "unless you pass --allow-remote for a server you operate."
            )
    return f"{parsed.scheme or 'http'}://{parsed.netloc}"


def request_body(metadata: dict[str, Any], batch: int, fmt: str = "binary") -> tuple[bytes, int]:
    """A V2 request (random inputs shaped by the model's metadata) and, for the binary
    extension, the length of its JSON header (0 for ``fmt="json"``)."""
    from slimserve.serve.v2codec import V2_TO_NUMPY

    rng = np.random.default_rng(0)
    specs, chunks = [], []
    for spec in metadata["inputs"]:
        shape = [batch if i == 0 and d == -1 else d for i, d in enumerate(spec["shape"])]
        if any(d < 0 for d in shape):
            raise SlimserveError(
                f"Input '{spec['name']}' has dynamic dimensions {spec['shape']} besides the "
                "batch: the load test cannot invent a realistic shape for it."
            )
        entry: dict[str, Any] = {"name": spec["name"], "shape": shape, "datatype": spec["datatype"]}
        if spec["datatype"] == "BYTES":  # a text model: real English sentences
            from slimserve.examples.minilm import english_sentences

            texts = english_sentences(max(1, math.prod(shape)))
            if fmt == "json":
                entry["data"] = texts
            else:
                raw = b"".join(len(t.encode()).to_bytes(4, "little") + t.encode() for t in texts)
                entry["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            specs.append(entry)
            continue
        dtype = np.dtype(V2_TO_NUMPY[spec["datatype"]])
        array = (rng.standard_normal(shape) if dtype.kind == "f" else np.zeros(shape)).astype(dtype)
        if fmt == "json":
            entry["data"] = array.reshape(-1).tolist()
        else:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        specs.append(entry)
    header = json.dumps({"inputs": specs}).encode()
    return header + b"".join(chunks), (len(header) if fmt != "json" else 0)


def _http_request(
    base: str, path: str, body: bytes, header_length: int, token: str | None
) -> bytes:
    parsed = urlparse(base)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parsed.netloc}",
        f"Content-Length: {len(body)}",
        # V2 servers other than Triton-style ones (MLServer, KServe) want a content type.
        "Content-Type: " + ("application/octet-stream" if header_length else "application/json"),
    ]
    if header_length:
        lines.append(f"Inference-Header-Content-Length: {header_length}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection as a bare protocol: a request is one write, its
    response one future, resolved once the Content-Length bytes arrived. (Asyncio streams
    with ``wait_for`` cost more client CPU per request than the server spends on it.)"""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports do not subclass asyncio's
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[: end + 2]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            waiter.set_exception(ConnectionError("response without Content-Length"))
            return
        try:
            status = int(head[9:12])
            length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
        except ValueError:
            waiter.set_exception(ConnectionError(f"malformed response head {head[:80]!r}"))
            return
        if len(self.buffer) < end + 4 + length:
            return
        payload = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        waiter.set_result((status, payload, b"\r\nconnection: close" in head))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("server closed the connection"))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no response in {RESPONSE_TIMEOUT_S:.0f} s"))


RESPONSE_TIMEOUT_S = 30.0


async def _send(
    base: str, request: bytes, connection: _Connection | None
) -> tuple[str, str | None, _Connection | None]:
    """One request: (status or error name, error detail or None, the connection to reuse)."""
    parsed = urlparse(base)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        if connection is None:
            _, connection = await loop.create_connection(
                _Connection,
                parsed.hostname or "127.0.0.1",
                port,
                ssl=parsed.scheme == "https" or None,
            )
        waiter = connection.send(request)
        timer = loop.call_later(RESPONSE_TIMEOUT_S, _expire, waiter)
        try:
            status, payload, close = await waiter
        finally:
            timer.cancel()
        detail = None
        if status != 200:
            detail = f"HTTP {status}: {payload[:200].decode(errors='replace')}"
        if close:
            _close(connection)
            connection = None
        return str(status), detail, connection
    except (OSError, ValueError, TimeoutError) as exc:
        if connection is not None:
            _close(connection)
        return type(exc).__name__, f"{type(exc).__name__}: {exc}", None


async def _client(
    base: str, request: bytes, result: LoadResult, remaining: list[int], deadline: float
) -> None:
    """One keep-alive connection sending ``request`` until the budget is spent."""
    connection: _Connection | None = None
    while remaining[0] > 0 and time.perf_counter() < deadline:
        remaining[0] -= 1
        t0 = time.perf_counter()
        status, detail, connection = await _send(base, request, connection)
        result.record(t0, status, detail)
    if connection is not None:
        _close(connection)


OPEN_LOOP_CONNECTIONS = 256  # an open-loop run's keep-alive connections at most


async def _open_loop(
    base: str, request: bytes, result: LoadResult, config: LoadTestConfig, deadline: float
) -> None:
    """Requests at a fixed ``rate`` per second whatever the answers (open loop), over at
    most ``OPEN_LOOP_CONNECTIONS`` keep-alive connections (a request due while all are
    busy waits for one). Latency counts from the scheduled send time, so neither a slow
    server nor the client's own wait is hidden (coordinated omission)."""
    loop = asyncio.get_running_loop()
    idle: list[_Connection | None] = [None] * OPEN_LOOP_CONNECTIONS  # None: not yet open
    free = asyncio.Semaphore(OPEN_LOOP_CONNECTIONS)
    running: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        async with free:
            sent = time.perf_counter()
            connection: _Connection | None = idle.pop()
            try:
                status, detail, connection = await _send(base, request, connection)
            except Exception as exc:  # the slot must come back, or a later pop finds none
                if connection is not None:
                    _close(connection)
                status, detail, connection = "error", f"{type(exc).__name__}: {exc}", None
            finally:
                idle.append(connection)
        if detail is None:
            result.ok_sent_latencies_ms.append((time.perf_counter() - sent) * 1e3)
        result.record(scheduled, status, detail)

    started = time.perf_counter()
    assert config.rate is not None
    for k in range(config.requests):
        scheduled = started + k / config.rate
        if scheduled >= deadline:
            break
        wait = scheduled - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        task = loop.create_task(one(scheduled))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)
    for connection in idle:
        if connection is not None:
            _close(connection)


def _close(connection: _Connection) -> None:
    if connection.transport is not None:
        connection.transport.close()


async def _run(base: str, model: str, config: LoadTestConfig) -> LoadResult:
    httpx: Any = require("httpx", "serve", "The load test")
    token = config.token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        meta = await client.get(f"/v2/models/{model}")
    if meta.status_code != 200:
        raise SlimserveError(
            f"{base}: model '{model}' metadata returned {meta.status_code}: {meta.text[:200]}"
        )
    if config.route == "openai":
        from slimserve.examples.minilm import english_sentences

        texts = english_sentences(config.batch)
        body, header_length = json.dumps({"model": model, "input": texts}).encode(), 0
        path = "/v1/embeddings"
    else:
        body, header_length = request_body(meta.json(), config.batch, config.format)
        path = f"/v2/models/{model}/infer"
    request = _http_request(base, path, body, header_length, token)
    result = LoadResult(0, 0, 0.0)
    remaining = [config.requests]
    started = time.perf_counter()
    deadline = started + config.duration
    if config.rate:
        await _open_loop(base, request, result, config, deadline)
    else:
        await asyncio.gather(
            *(
                _client(base, request, result, remaining, deadline)
                for _ in range(config.concurrency)
            )
        )
    result.seconds = time.perf_counter() - started
    return result


def load_test(url: str, model: str, config: LoadTestConfig | None = None) -> LoadResult:
    """Load-test ``model`` on the V2 server at ``url`` within ``config``'s bounds."""
    config = config or LoadTestConfig()
    base = check_target(url, config.allow_remote)
    run: Any = asyncio.run
    try:
        import uvloop  # the [serve] extra brings it: a faster event loop for the clients

        run = uvloop.run
    except ImportError:
        pass
    result: LoadResult = run(_run(base, model, config))
    return result
