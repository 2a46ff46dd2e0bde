"""The transport-free infer core: input checks, text tokenization, error statuses and
the answer to one V2 infer request. HTTP (the ASGI app and the uvicorn fast path) and
gRPC call it; it knows nothing of either."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.errors import first_line
from slimserve.serve.config import ServeConfig
from slimserve.serve.v2codec import (
    NUMPY_TO_V2,
    ProtocolError,
    TooLarge,
    encode_response,
    parse_request,
    v2_datatype,
)

if TYPE_CHECKING:
    from slimserve.serve.state import ServerState

HEADER_LENGTH = b"inference-header-content-length"
log = logging.getLogger("slimserve.serve")


def tensor_metadata(spec: dict[str, Any]) -> dict[str, Any]:
    """V2 metadata of one input/output: dynamic dimensions are -1."""
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]
    return {"name": spec["name"], "datatype": v2_datatype(spec["dtype"]), "shape": shape}


TEXT_INPUT = "text"


def input_metadata(model: Any) -> list[dict[str, Any]]:
    """What clients send: raw strings for text models (token ids are accepted too)."""
    if model.text is not None:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    return [tensor_metadata(s) for s in model.inputs]


def tokenize_request(
    model: Any, inputs: dict[str, np.ndarray], config: ServeConfig
) -> dict[str, Any]:
    """A text model's 'text' input (BYTES, one string per row) as token arrays, padded to
    the longest string of the request."""
    from slimserve.models.hf import tokenize

    max_rows = config.request_rows
    if len(inputs) != 1:
        raise ProtocolError(
            f"Send either '{TEXT_INPUT}' alone or the token inputs {list(model.input_checks)}."
        )
    strings = inputs[TEXT_INPUT]
    if strings.dtype != object:
        raise ProtocolError(f"Input '{TEXT_INPUT}' must be BYTES (UTF-8 strings).")
    if strings.ndim == 2 and strings.shape[1] == 1:
        strings = strings[:, 0]
    if strings.ndim != 1 or len(strings) == 0:
        raise ProtocolError(
            f"Input '{TEXT_INPUT}' must have shape [-1] (one string per row), "
            f"got {list(strings.shape)}."
        )
    if len(strings) > max_rows:
        raise ProtocolError(f"Batch of {len(strings)} rows is over the {max_rows}-row limit.")
    size = sum(len(s) for s in strings)
    if size > config.max_text_chars:  # bytes bound characters from above
        chars = sum(
            len(s.decode("utf-8", "replace")) if isinstance(s, bytes) else len(s) for s in strings
        )
        if chars > config.max_text_chars:
            raise TooLarge(
                f"The request holds {chars} characters of text, over the "
                f"{config.max_text_chars}-character limit (--max-text-chars). Send fewer or "
                "shorter texts per request."
            )
    try:
        texts = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in strings]
    except UnicodeDecodeError:
        raise ProtocolError(f"Input '{TEXT_INPUT}' holds bytes that are not UTF-8.") from None
    if not config.truncate_text:
        refuse_long_texts(model, texts)
    encoded = tokenize(model.text.tokenizer, texts, model.text.max_length)
    if size > LARGE_TEXT:
        from slimserve.runtime import trim_memory

        trim_memory()
    return {k: v for k, v in encoded.items() if k in model.input_checks}


def refuse_long_texts(model: Any, texts: list[str]) -> None:
    """A ProtocolError naming the first text over the model's token limit (for servers
    started with truncation off)."""
    limit = model.text.max_length
    lengths = [len(ids) for ids in model.text.tokenizer(texts, truncation=False)["input_ids"]]
    for index, length in enumerate(lengths):
        if length > limit:
            raise ProtocolError(
                f"Text {index} is {length} tokens, over the model's {limit}-token limit, and "
                "the server does not truncate (--no-truncate): send shorter texts."
            )


LARGE_TEXT = 1 << 20  # bytes of text after which freed memory is handed back to the OS


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

    def submit(inputs: dict[str, np.ndarray]) -> None:
        try:
            checked = server.checked(model, inputs)
        except Exception as exc:
            done(None, exc)
            return
        server.batchers[(model.name, model.version)].submit(checked, done)

    if not server.is_text(model, parsed.inputs):
        submit(parsed.inputs)
        return
    import asyncio

    tokenizing = asyncio.get_running_loop().run_in_executor(
        server.tokenizer_pool, server.tokenized, model, parsed.inputs
    )

    def tokenized(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        error = future.exception()
        if error is not None:
            done(None, error)
        else:
            submit(future.result())

    tokenizing.add_done_callback(tokenized)


def answer_error(model: Any, error: BaseException) -> Answer:
    """The answer to a request that failed with ``error`` (status from error_status)."""
    return _answer_outputs(model, None, None, error)


def _answer_outputs(
    model: Any, parsed: Any, outputs: dict[str, np.ndarray] | None, error: BaseException | None
) -> Answer:
    import orjson

    if error is not None:
        status, message = error_status(model, error)
        headers = [JSON_TYPE, RETRY_AFTER] if status == 503 else [JSON_TYPE]
        return status, orjson.dumps({"error": message}), headers
    assert outputs is not None
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
_LOGGED_FAILURES: set[tuple[str, str, str]] = set()


def error_status(model: Any, error: BaseException) -> tuple[int, str]:
    """(HTTP status, message) for a request that failed: 400/413 for a bad request, 503
    for a full queue, 504 past its deadline, 500 when the model failed. A model failure's
    traceback is logged once per distinct failure, not once per request."""
    from slimserve.serve.batching import DeadlineExceeded, QueueFull

    if isinstance(error, TooLarge):
        return 413, str(error)
    if isinstance(error, ProtocolError):
        return 400, str(error)
    if isinstance(error, QueueFull):
        return 503, str(error)
    if isinstance(error, DeadlineExceeded):
        return 504, str(error)
    key = (model.name, type(error).__name__, first_line(error)[:200])
    if key not in _LOGGED_FAILURES:
        if len(_LOGGED_FAILURES) < 1000:  # bounded: distinct failures, not requests
            _LOGGED_FAILURES.add(key)
        log.error(
            "model run failed (logged once; later requests failing alike are only counted)",
            exc_info=error,
            extra={"model": model.name},
        )
    return 500, f"Model '{model.name}' failed: {first_line(error)}"


def check_inputs(
    model: Any, inputs: dict[str, np.ndarray], config: ServeConfig
) -> dict[str, np.ndarray]:
    """Names, datatypes, shapes and values against the model's metadata (ids inside the
    table they index, floats finite); errors name the input."""
    max_rows = config.request_rows
    expected = model.input_checks
    if inputs.keys() != expected.keys():
        missing = [n for n in expected if n not in inputs]
        extra = [n for n in inputs if n not in expected]
        raise ProtocolError(
            f"Model '{model.name}' takes inputs {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
            + "."
        )
    rows = set()
    for name, array in inputs.items():
        dtype, fixed = expected[name]
        if array.dtype != dtype:
            got = NUMPY_TO_V2.get(array.dtype.name, array.dtype.name)
            raise ProtocolError(f"Input '{name}' must be {v2_datatype(dtype.name)}, got {got}.")
        if array.ndim != len(fixed) or any(
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
    for name, bound in model.index_bounds.items():
        ids = inputs.get(name)
        if ids is not None and ids.size and (ids.min() < 0 or ids.max() >= bound):
            raise ProtocolError(
                f"Input '{name}' holds ids outside [0, {bound}): the table it indexes has "
                f"{bound} rows (min {int(ids.min())}, max {int(ids.max())})."
            )
    if config.reject_nonfinite:
        for name, array in inputs.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ProtocolError(
                    f"Input '{name}' holds NaN or infinity; the model's outputs would be "
                    "meaningless. Send finite values."
                )
    return {k: np.ascontiguousarray(v) for k, v in inputs.items()}
