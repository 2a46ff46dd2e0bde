"""OpenAI's completions and chat completions for decoder LM artifacts, on the server's own
port: ``POST /v1/completions`` and ``POST /v1/chat/completions``, plain or streamed as
server-sent events ending in ``data: [DONE]``, with ``n``, ``seed``, ``stop`` (cut
exactly), ``logprobs`` in OpenAI's shapes and ``usage``. Tokens come from the model's
``LlmEngine`` (continuous batching); a client that leaves frees its slots at the next step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from slimserve.serve.chat_request import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    first_stop,
    parse,
    prompt_tokens,
    settled,
)
from slimserve.serve.llm_engine import EngineFull, LlmServed, Sequence
from slimserve.serve.llm_sampling import Sampling, Token
from slimserve.serve.openai import OpenAIError


@dataclass
class Choice:
    """One of a request's n sequences, as it is turned back into text."""

    index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[Token] = field(default_factory=list)
    sent: int = 0  # characters of text already sent
    text: str = ""
    finish: str | None = None


async def generate(
    path: str,
    body: bytes,
    served: dict[str, LlmServed],
    send_event: Callable[[bytes], Awaitable[None]] | None,
    on_leave: Callable[[Callable[[], None]], None],
) -> tuple[int, bytes]:
    """Answer one request. Streaming (``send_event`` given and the request asks for it):
    events are sent as they come, and the return is (200, b""); otherwise (status, body).
    ``on_leave`` registers what to call when the client disconnects: the request's
    sequences are cancelled there and then, and their slots freed before the next step."""
    import orjson

    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OpenAIError(400, "The body is not JSON.") from None
    model, fields = parse(path, request, served)
    prompt = prompt_tokens(path, request, model)
    limit = model.engine.context_length
    room = limit - len(prompt)
    asked = fields["max_tokens"]
    if asked is not None and (not isinstance(asked, int) or asked < 1):
        raise OpenAIError(400, "'max_tokens' must be a positive integer.", "max_tokens")
    if asked is not None and asked > model.max_tokens:
        raise OpenAIError(
            400, f"'max_tokens' {asked} is over this server's {model.max_tokens}.", "max_tokens"
        )
    if room < 1 or (asked is not None and len(prompt) + asked > limit):
        raise OpenAIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{len(prompt) + (asked or 1)} tokens ({len(prompt)} in the prompt, "
            f"{asked or 1} for the completion). Please reduce the prompt or the completion.",
            "messages" if path == CHAT_PATH else "prompt",
            "context_length_exceeded",
        )
    default = 16 if path == COMPLETIONS_PATH else min(room, model.max_tokens)
    max_tokens = asked or min(default, room)
    streams = _start(model, prompt, fields, max_tokens)

    def abandon() -> None:
        for sequence, queue, _ in streams:
            model.engine.cancel(sequence)
            queue.put_nowait(Token(-1, finish="cancelled"))

    on_leave(abandon)
    kind = "chatcmpl" if path == CHAT_PATH else "cmpl"
    meta = {"id": f"{kind}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model.name}
    try:
        if fields["stream"] and send_event is not None:
            await _stream(path, model, fields, streams, meta, prompt, send_event)
            return 200, b""
        choices = [c async for c in _collect(model, fields, streams)]
    finally:
        for sequence, _, _ in streams:
            model.engine.cancel(sequence)
    usage = _usage(prompt, choices)
    return 200, orjson.dumps(_whole(path, meta, model, choices, fields) | {"usage": usage})


def _start(
    model: LlmServed, prompt: list[int], fields: dict[str, Any], max_tokens: int
) -> list[tuple[Sequence, asyncio.Queue[Token], Choice]]:
    loop = asyncio.get_running_loop()
    queues: list[asyncio.Queue[Token]] = [asyncio.Queue() for _ in range(fields["n"])]
    choices: list[tuple[Sampling, Callable[[Token], None]]] = []
    for index, queue in enumerate(queues):
        seed = None if fields["seed"] is None else fields["seed"] + index
        sampling = Sampling(
            max_tokens,
            fields["temperature"],
            fields["top_p"],
            fields["top_k"],
            seed,
            fields["logprobs"],
        )

        def emit(token: Token, queue: asyncio.Queue[Token] = queue) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, token)

        choices.append((sampling, emit))
    try:
        sequences = model.engine.submit_all(prompt, choices)
    except EngineFull as exc:
        raise OpenAIError(429, f"The server is busy: {exc}", None, "rate_limit_exceeded") from None
    streams = [
        (sequence, queue, Choice(index))
        for index, (sequence, queue) in enumerate(zip(sequences, queues, strict=True))
    ]
    return streams


async def _tokens(
    model: LlmServed, fields: dict[str, Any], stream: tuple[Sequence, asyncio.Queue[Token], Choice]
) -> AsyncIterator[str]:
    """One choice's new text as it becomes final (held back while it could still be the
    start of a stop string, or an unfinished character); ends with ``choice.finish`` set."""
    sequence, queue, choice = stream
    started = time.perf_counter()
    last = started
    while choice.finish is None:
        token = await queue.get()
        if token.finish == "cancelled":  # the client left
            choice.finish = "cancelled"
            break
        now = time.perf_counter()
        if model.metrics is not None:
            (model.metrics.ttft if not choice.tokens else model.metrics.inter_token).labels(
                model.name
            ).observe(now - last)
        last = now
        if token.finish and token.finish.startswith("error"):
            raise OpenAIError(500, f"Generation failed: {token.finish[7:]}")
        if token.finish != "stop":  # the end-of-sequence token is not text
            choice.tokens.append(token.token)
            choice.logprobs.append(token)
        choice.text = model.tokenizer.decode(choice.tokens, skip_special_tokens=True)
        cut = first_stop(choice.text, fields["stop"], choice.sent)
        if cut is not None:
            choice.text, choice.finish = choice.text[:cut], "stop"
            model.engine.cancel(sequence, abandoned=False)
        elif token.finish:
            choice.finish = token.finish
        final = choice.text if choice.finish else settled(choice.text, fields["stop"])
        if len(final) > choice.sent:
            yield final[choice.sent :]
            choice.sent = len(final)
    if model.metrics is not None:
        model.metrics.generated.labels(model.name).inc(len(choice.tokens))


async def _collect(
    model: LlmServed, fields: dict[str, Any], streams: list[Any]
) -> AsyncIterator[Choice]:
    async def drain(stream: Any) -> Choice:
        async for _ in _tokens(model, fields, stream):
            pass
        return stream[2]  # type: ignore[no-any-return]

    for choice in await asyncio.gather(*(drain(s) for s in streams)):
        yield choice


async def _stream(
    path: str,
    model: LlmServed,
    fields: dict[str, Any],
    streams: list[Any],
    meta: dict[str, Any],
    prompt: list[int],
    send_event: Callable[[bytes], Awaitable[None]],
) -> None:
    import orjson

    chat = path == CHAT_PATH
    kind = "chat.completion.chunk" if chat else "text_completion"
    lock = asyncio.Lock()

    async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        async with lock:
            event = {**meta, "object": kind, "choices": choices, **extra}
            await send_event(b"data: " + orjson.dumps(event) + b"\n\n")

    async def one(stream: Any) -> None:
        choice: Choice = stream[2]
        if chat:
            await send([{"index": choice.index, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}])  # fmt: skip
        reported = 0
        async for text in _tokens(model, fields, stream):
            logprobs = _logprobs_body(chat, model, choice.logprobs[reported:], fields)
            reported = len(choice.logprobs)
            body: dict[str, Any] = {"delta": {"content": text}} if chat else {"text": text}
            await send(
                [{"index": choice.index, **body, "logprobs": logprobs, "finish_reason": None}]
            )
        end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        await send(
            [{"index": choice.index, **end, "logprobs": None, "finish_reason": choice.finish}]
        )

    await asyncio.gather(*(one(s) for s in streams))
    if fields["usage_in_stream"]:
        await send([], usage=_usage(prompt, [s[2] for s in streams]))
    await send_event(b"data: [DONE]\n\n")


def _whole(
    path: str, meta: dict[str, Any], model: LlmServed, choices: list[Choice], fields: dict[str, Any]
) -> dict[str, Any]:
    chat = path == CHAT_PATH
    rows = []
    for choice in choices:
        logprobs = _logprobs_body(chat, model, choice.logprobs, fields)
        if chat:
            message = {"role": "assistant", "content": choice.text}
            rows.append({"index": choice.index, "message": message, "logprobs": logprobs,
                         "finish_reason": choice.finish})  # fmt: skip
        else:
            rows.append({"index": choice.index, "text": choice.text, "logprobs": logprobs,
                         "finish_reason": choice.finish})  # fmt: skip
    return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": rows}


def _logprobs_body(
    chat: bool, model: LlmServed, tokens: list[Token], fields: dict[str, Any]
) -> dict[str, Any] | None:
    """OpenAI's logprobs: chat's ``{"content": [{token, logprob, bytes, top_logprobs}]}``,
    completions' ``{tokens, token_logprobs, top_logprobs, text_offset}``."""
    if fields["logprobs"] is None:
        return None

    def text(token: int) -> str:
        return str(model.tokenizer.decode([token]))

    if chat:
        return {
            "content": [
                {
                    "token": text(t.token),
                    "logprob": t.logprob,
                    "bytes": list(text(t.token).encode()),
                    "top_logprobs": [
                        {"token": text(a), "logprob": p, "bytes": list(text(a).encode())}
                        for a, p in t.top
                    ],
                }
                for t in tokens
            ]
        }
    offsets, position = [], 0
    for t in tokens:
        offsets.append(position)
        position += len(text(t.token))
    return {
        "tokens": [text(t.token) for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{text(a): p for a, p in t.top} for t in tokens],
        "text_offset": offsets,
    }


def _usage(prompt: list[int], choices: list[Choice]) -> dict[str, int]:
    made = sum(len(c.tokens) for c in choices)
    return {
        "prompt_tokens": len(prompt),
        "completion_tokens": made,
        "total_tokens": len(prompt) + made,
    }
