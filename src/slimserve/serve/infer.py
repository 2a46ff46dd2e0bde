"""The answer to one V2 infer request over HTTP, whatever serves the connection (the
ASGI app or the uvicorn fast path): parse the body, ``submit`` it, encode the outputs
or the error as V2's JSON or binary answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from slimserve.serve.repository import ServedModel
from slimserve.serve.state import ServerState
from slimserve.serve.submit import TEXT_INPUT, error_status, submit
from slimserve.serve.v2codec import (
    ProtocolError,
    Request,
    encode_response,
    parse_request,
    v2_datatype,
)

HEADER_LENGTH = b"inference-header-content-length"


def tensor_metadata(spec: dict[str, Any]) -> dict[str, Any]:
    """V2 metadata of one input/output: dynamic dimensions are -1."""
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]
    return {"name": spec["name"], "datatype": v2_datatype(spec["dtype"]), "shape": shape}


def input_metadata(model: ServedModel) -> list[dict[str, Any]]:
    """What clients send: raw strings for text models (token ids are accepted too)."""
    if model.text is not None:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    return [tensor_metadata(s) for s in model.inputs]


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

    submit(server, model, parsed.inputs, done)


def answer_error(model: ServedModel, error: BaseException) -> Answer:
    """The answer to a request that failed with ``error`` (status from error_status)."""
    return _answer_outputs(model, None, None, error)


def _answer_outputs(
    model: ServedModel,
    parsed: Request | None,
    outputs: dict[str, np.ndarray] | None,
    error: BaseException | None,
) -> Answer:
    import orjson

    if error is not None:
        status, message = error_status(model, error)
        headers = [JSON_TYPE, RETRY_AFTER] if status == 503 else [JSON_TYPE]
        return status, orjson.dumps({"error": message}), headers
    assert outputs is not None and parsed is not None
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
