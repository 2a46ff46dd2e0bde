"""The HTTP side of generation: OpenAI's completions and chat (``serve.chat``) answered
as JSON or as server-sent events while the tokens come, and Triton's generate extension
(``/v2/models/{m}/generate`` and ``generate_stream``) on top of the same code. A client
that disconnects has its sequences cancelled there and then."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slimserve.serve.state import ServerState

log = logging.getLogger("slimserve.serve")
JSON = [(b"content-type", b"application/json")]


async def answer_generate(
    state: ServerState, path: str, receive: Any, send: Any, body: bytes
) -> None:
    """A completions or chat request: JSON, or server-sent events as tokens come; a client
    that disconnects (seen while its request runs) has its sequences cancelled."""
    from slimserve.serve import chat, openai

    left = False
    started = False
    hooks: list[Any] = []

    def on_leave(hook: Any) -> None:
        hooks.append(hook)
        if left:
            hook()

    async def watch() -> None:
        nonlocal left
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                left = True
                for hook in hooks:
                    hook()
                return

    watcher = asyncio.create_task(watch())

    async def send_event(data: bytes) -> None:
        nonlocal started
        if left:
            raise ConnectionError("the client left")
        if not started:
            started = True
            head = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": data, "more_body": True})

    json = list(JSON)
    try:
        status, payload = await chat.generate(path, body, state.llms, send_event, on_leave)
        if started:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _respond(send, status, payload, json)
    except openai.OpenAIError as exc:
        payload = openai.error_body(exc.status, str(exc), exc.param, exc.code)
        if started:  # an error after the stream began: one error event, then the end
            await send({"type": "http.response.body", "body": b"data: " + payload + b"\n\n"})
        else:
            await _respond(send, exc.status, payload, json)
    except ConnectionError:
        pass
    except Exception as exc:  # one request's failure, answered; the server goes on
        log.exception("generation failed")
        if not started:
            payload = openai.error_body(500, f"Generation failed: {exc}")
            await _respond(send, 500, payload, json)
    finally:
        watcher.cancel()


async def answer_v2_generate(
    state: ServerState, name: str, path: str, receive: Any, send: Any, body: bytes
) -> None:
    """Triton's generate extension: ``{"text_input": ..., "max_tokens", "temperature",
    "top_p", "seed", "stop"}`` in; ``{"model_name", "model_version", "text_output"}`` out,
    whole or (``generate_stream``) as server-sent events of the new text."""
    import orjson

    from slimserve.serve import chat_request

    try:
        request = orjson.loads(body)
        assert isinstance(request, dict) and isinstance(request.get("text_input"), str)
    except (orjson.JSONDecodeError, AssertionError):
        message = "The body must be a JSON object with a string 'text_input'."
        await _respond(send, 400, orjson.dumps({"error": message}), list(JSON))
        return
    given = request.get("parameters")
    parameters: dict[str, Any] = given if isinstance(given, dict) else {}
    options = {**parameters, **{k: v for k, v in request.items() if k != "parameters"}}
    completion = {"model": name, "prompt": options.pop("text_input")}
    for key in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop"):
        if key in options:
            completion[key] = options[key]
    completion["stream"] = path.endswith("generate_stream")
    head = {"model_name": name, "model_version": "1"}

    async def as_v2(send_message: Any) -> Any:
        async def translated(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body", b"").startswith(
                b"data: {"
            ):
                event = orjson.loads(message["body"][6:])
                if "error" in event:
                    piece = {"error": event["error"]["message"]}
                else:
                    text = "".join(c.get("text") or "" for c in event.get("choices", []))
                    if not text:
                        return
                    piece = {**head, "text_output": text}
                message = {**message, "body": b"data: " + orjson.dumps(piece) + b"\n\n"}
            elif (
                message["type"] == "http.response.body"
                and message.get("body") == b"data: [DONE]\n\n"
            ):
                return
            elif message["type"] == "http.response.body" and message.get("body"):
                answer = orjson.loads(message["body"])
                if "error" in answer:
                    answer = {"error": answer["error"]["message"]}
                else:
                    answer = {**head, "text_output": answer["choices"][0]["text"]}
                message = {**message, "body": orjson.dumps(answer)}
            elif message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [h for h in message["headers"] if h[0] != b"content-length"],
                }
            await send_message(message)

        return translated

    await answer_generate(
        state, chat_request.COMPLETIONS_PATH, receive, await as_v2(send), orjson.dumps(completion)
    )


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
