"""Load-test generation the way LLM servers are judged: ``concurrency`` clients each
stream OpenAI completions or chat requests back to back (``stream: true``), and the result
is time to first token (p50/p99), the gap between two chunks of one stream (p99), the
aggregate completion tokens/s (from each stream's ``usage``, else its chunks), and errors.
Any OpenAI-compatible server answers it (slimserve, llama-server, vLLM)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROMPTS = (
    "Explain in a few sentences how a compiler turns source code into a program.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List the steps to make a cup of tea, and say why each one matters.",
    "Describe the water cycle to a ten-year-old.",
    "What are the trade-offs between speed and accuracy in measuring things?",
    "Summarise the history of the printing press in one paragraph.",
    "Give three reasons why people keep diaries, with an example of each.",
    "How does a bicycle stay upright while it moves?",
)


@dataclass
class StreamResult:
    seconds: float = 0.0
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    first_error: str | None = None
    ttft_ms: list[float] = field(default_factory=list)
    gaps_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def percentile(values: list[float], q: float) -> float | None:
            return float(np.percentile(values, q)) if values else None

        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
            "ttft_p50_ms": percentile(self.ttft_ms, 50),
            "ttft_p99_ms": percentile(self.ttft_ms, 99),
            "inter_token_p99_ms": percentile(self.gaps_ms, 99),
            "first_error": self.first_error,
        }


def request_body(route: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if route == "chat":
        return body | {"messages": [{"role": "user", "content": prompt}]}
    return body | {"prompt": prompt}


async def _one(client: Any, url: str, body: dict[str, Any], result: StreamResult) -> None:
    started = time.perf_counter()
    stamps: list[float] = []
    usage = None
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:200]
                raise RuntimeError(f"HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if piece:
                        stamps.append(time.perf_counter())
    except Exception as exc:  # one failed stream is counted, the test goes on
        result.errors += 1
        result.first_error = result.first_error or str(exc)
        return
    finally:
        result.requests += 1
    if stamps:
        result.ttft_ms.append((stamps[0] - started) * 1e3)
        result.gaps_ms.extend((b - a) * 1e3 for a, b in itertools.pairwise(stamps))
    result.tokens += int(usage["completion_tokens"]) if usage else len(stamps)


async def _run(
    base: str, route: str, model: str, concurrency: int, requests: int, duration: float,
    max_tokens: int, token: str | None,
) -> StreamResult:  # fmt: skip
    import httpx

    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    result = StreamResult()
    prompts = itertools.cycle(PROMPTS)
    sent = 0
    deadline = time.perf_counter() + duration
    started = time.perf_counter()
    timeout = httpx.Timeout(max(duration, 60.0))

    async def client_loop(client: Any) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            body = request_body(route, model, next(prompts), max_tokens)
            await _one(client, base + path, body, result)

    async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def stream_load_test(
    url: str,
    model: str,
    route: str = "chat",
    concurrency: int = 8,
    requests: int = 64,
    duration: float = 60.0,
    max_tokens: int = 64,
    token: str | None = None,
) -> StreamResult:
    """``concurrency`` clients streaming ``route`` (chat | completions) requests back to
    back, at most ``requests`` of them and ``duration`` seconds."""
    args = (url.rstrip("/"), route, model, concurrency, requests, duration, max_tokens, token)
    return asyncio.run(_run(*args))
