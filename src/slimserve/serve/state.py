"""What every endpoint shares, whatever transport carried the request: the models,
their batchers, metrics and the config. Requests go to a model through
``serve/submit.py``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from slimserve.serve.batching import Batcher
from slimserve.serve.config import ServeConfig
from slimserve.serve.repository import ServedModel

log = logging.getLogger("slimserve.serve")


@dataclass
class ServerState:
    """What every endpoint shares: the models, their batchers, metrics, the config."""

    models: dict[str, dict[str, ServedModel]]
    batchers: dict[tuple[str, str], Batcher]
    metrics: Any
    config: ServeConfig
    grpc_port: int | None = None
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _latest: dict[str, ServedModel] = field(default_factory=dict)
    # The HTTP fast path's open connections (uvicorn's set) and how many of them wait for
    # an answer: when all do, no request can join a batch (see no_more_company).
    http_connections: Any = None
    http_waiting: int = 0
    tokenizer_pool: Any = None  # one thread: text requests are tokenized off the loop
    started_at: float = field(default_factory=time.time)  # /v1/models' "created"
    # Shutdown began: gRPC calls are answered UNAVAILABLE (the code clients retry
    # elsewhere) while those in flight (counted here) finish.
    draining: bool = False
    grpc_in_flight: int = 0
    llms: dict[str, Any] = field(default_factory=dict)  # name -> serve.chat.LlmServed

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

    def find(self, name: str, version: str | None) -> ServedModel:
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
