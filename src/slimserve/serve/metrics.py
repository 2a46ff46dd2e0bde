"""Prometheus metrics of one server (its own registry, so tests and apps don't mix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metrics:
    registry: Any = None
    requests: Any = None
    errors: Any = None
    latency: Any = None
    batch_size: Any = None
    queue_depth: Any = None
    rejected: Any = None
    ttft: Any = None
    inter_token: Any = None
    generated: Any = None
    sequences: Any = None
    kv_tokens: Any = None
    _ready: bool = field(default=False)

    @classmethod
    def create(cls) -> Metrics:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "slimserve_requests", "Inference requests", ["model", "code"], registry=registry
            ),
            errors=Counter(
                "slimserve_errors", "Requests answered with an error", ["model"], registry=registry
            ),
            latency=Histogram(
                "slimserve_request_seconds",
                "Inference request latency",
                ["model"],
                buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                registry=registry,
            ),
            batch_size=Histogram(
                "slimserve_batch_size",
                "Rows per model run after dynamic batching",
                ["model"],
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                registry=registry,
            ),
            queue_depth=Gauge(
                "slimserve_queue_depth",
                "Requests waiting to be batched",
                ["model"],
                registry=registry,
            ),
            rejected=Counter(
                "slimserve_rejected",
                "Requests refused by a limit before the model ran (queue_full, deadline)",
                ["model", "reason"],
                registry=registry,
            ),
            ttft=Histogram(
                "slimserve_time_to_first_token_seconds",
                "Decoder LMs: from a sequence's submission to its first token",
                ["model"],
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=registry,
            ),
            inter_token=Histogram(
                "slimserve_inter_token_seconds",
                "Decoder LMs: between two tokens of one sequence",
                ["model"],
                buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5),
                registry=registry,
            ),
            generated=Counter(
                "slimserve_generated_tokens",
                "Decoder LMs: tokens generated",
                ["model"],
                registry=registry,
            ),
            sequences=Gauge(
                "slimserve_sequences",
                "Decoder LMs: sequences by state (running, queued; cancelled: ended by their "
                "client leaving, since the start)",
                ["model", "state"],
                registry=registry,
            ),
            kv_tokens=Gauge(
                "slimserve_kv_cache_tokens",
                "Decoder LMs: KV cache tokens (used, capacity)",
                ["model", "kind"],
                registry=registry,
            ),
        )

    def watch_engines(self, llms: dict[str, Any]) -> None:
        """Gauges read from each decoder LM's engine when the metrics are scraped."""
        for name, served in llms.items():
            served.metrics = self
            engine = served.engine
            for state in ("running", "queued", "cancelled"):
                self.sequences.labels(name, state).set_function(
                    lambda e=engine, k=state: e.usage()[k]
                )
            for kind, key in (("used", "kv_tokens"), ("capacity", "kv_capacity")):
                self.kv_tokens.labels(name, kind).set_function(lambda e=engine, k=key: e.usage()[k])

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        data: bytes = generate_latest(self.registry)
        return data
