"""A bounded V2 load test: C concurrent clients, at most N requests and S seconds,
loopback only unless allowed; binary tensors as tritonclient sends them."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np

from slimserve.errors import SlimserveError, require


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None

    def summary(self) -> dict[str, float | int | str | None]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": self.requests / self.seconds if self.seconds else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "first_error": self.first_error,
        }


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


def request_body(metadata: dict[str, Any], batch: int) -> tuple[bytes, int]:
    """A binary-extension V2 request (random inputs shaped by the model's metadata) and
    the length of its JSON header."""
    from slimserve.serve.protocol import V2_TO_NUMPY

    rng = np.random.default_rng(0)
    specs, chunks = [], []
    for spec in metadata["inputs"]:
        shape = [batch if i == 0 and d == -1 else d for i, d in enumerate(spec["shape"])]
        if any(d < 0 for d in shape):
            raise SlimserveError(
                f"Input '{spec['name']}' has dynamic dimensions {spec['shape']} besides the "
                "batch: the load test cannot invent a realistic shape for it."
            )
        dtype = np.dtype(V2_TO_NUMPY[spec["datatype"]])
        array = (rng.standard_normal(shape) if dtype.kind == "f" else np.zeros(shape)).astype(dtype)
        raw = array.tobytes()
        specs.append(
            {
                "name": spec["name"],
                "shape": shape,
                "datatype": spec["datatype"],
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    header = json.dumps({"inputs": specs}).encode()
    return header + b"".join(chunks), len(header)


async def _run(base: str, model: str, options: dict[str, Any]) -> LoadResult:
    httpx: Any = require("httpx", "serve", "The load test")
    headers = {"Authorization": f"Bearer {options['token']}"} if options.get("token") else {}
    limits = httpx.Limits(max_connections=options["concurrency"])
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=30
    ) as client:
        meta = await client.get(f"/v2/models/{model}")
        if meta.status_code != 200:
            raise SlimserveError(
                f"{base}: model '{model}' metadata returned {meta.status_code}: {meta.text[:200]}"
            )
        body, header_length = request_body(meta.json(), options["batch"])
        request_headers = {"Inference-Header-Content-Length": str(header_length)}
        result = LoadResult(0, 0, 0.0)
        remaining = [options["requests"]]
        started = time.perf_counter()
        deadline = started + options["duration"]

        async def worker() -> None:
            while remaining[0] > 0 and time.perf_counter() < deadline:
                remaining[0] -= 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        f"/v2/models/{model}/infer", content=body, headers=request_headers
                    )
                    ok = response.status_code == 200
                    detail = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                result.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                result.requests += 1
                if not ok:
                    result.errors += 1
                    result.first_error = result.first_error or detail

        await asyncio.gather(*(worker() for _ in range(options["concurrency"])))
        result.seconds = time.perf_counter() - started
    return result


def load_test(
    url: str,
    model: str,
    concurrency: int = 8,
    requests: int = 1000,
    duration: float = 60.0,
    options: dict[str, Any] | None = None,
) -> LoadResult:
    """``options``: ``batch`` (rows per request, 1), ``token``, ``allow_remote``."""
    opts = {"batch": 1, "token": None, "allow_remote": False, **(options or {})}
    base = check_target(url, bool(opts["allow_remote"]))
    run_options = {**opts, "concurrency": concurrency, "requests": requests, "duration": duration}
    return asyncio.run(_run(base, model, run_options))
