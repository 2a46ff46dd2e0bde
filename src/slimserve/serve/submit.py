"""The one transport-free submit: a request's tensors (raw text or the model's own
inputs) for one served model, tokenized if text (in the tokenizer's thread, off the
event loop), checked against the model's inputs, then queued in the model's batcher.
Every route calls it: V2 HTTP (the ASGI app and the uvicorn fast path), gRPC and the
OpenAI routes. Its errors map to one set of statuses (``error_status``) that each
transport renders in its own shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.errors import first_line
from slimserve.serve.config import ServeConfig
from slimserve.serve.repository import ServedModel
from slimserve.serve.v2codec import NUMPY_TO_V2, ProtocolError, TooLarge, v2_datatype

if TYPE_CHECKING:
    from slimserve.serve.state import ServerState

log = logging.getLogger("slimserve.serve")
Outputs = dict[str, np.ndarray]
Done = Callable[[Outputs | None, BaseException | None], None]
"""Called once with the outputs, or with the error that stopped the request."""


def submit(
    state: ServerState, model: ServedModel, inputs: dict[str, np.ndarray], done: Done
) -> None:
    """Queue one request: ``done`` is called once, with its outputs or its error (at once
    for a request refused before the model). No coroutine, no task: the HTTP fast path
    calls this per request (~8 us each saved)."""
    if not is_text(model, inputs):
        submit_tokens(state, model, inputs, done)
        return
    tokenizing = asyncio.ensure_future(tokenize_text(state, model, inputs))

    def tokenized(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        error = future.exception()
        if error is not None:
            done(None, error)
        else:
            submit_tokens(state, model, future.result(), done)

    tokenizing.add_done_callback(tokenized)


def submit_tokens(
    state: ServerState, model: ServedModel, inputs: dict[str, np.ndarray], done: Done
) -> None:
    """``submit`` for inputs the model takes as they are (no raw text)."""
    try:
        checked = check_inputs(model, inputs, state.config)
    except Exception as exc:
        done(None, exc)
        return
    state.batchers[(model.name, model.version)].submit(checked, done)


async def infer(state: ServerState, model: ServedModel, inputs: dict[str, np.ndarray]) -> Outputs:
    """``submit`` as a coroutine: the outputs, or the request's error raised."""
    future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()

    def done(outputs: Outputs | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert outputs is not None
            future.set_result(outputs)

    submit(state, model, inputs, done)
    return await future


async def tokenize_text(
    state: ServerState, model: ServedModel, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A text request's token arrays, computed in the tokenizer's thread (tokenizing
    1 MB of text takes long enough to stall every other request on the loop); refused at
    once (QueueFull) when the model's queue is full. It is admitted before tokenizing and
    counted while it waits for that thread: under overload the thread's backlog is the
    queue, not the batcher's."""
    batcher = state.batchers[(model.name, model.version)]
    rows = text_rows(inputs)
    if batcher.full(rows):
        raise batcher.refusal(rows)
    batcher.tokenizing += 1
    batcher.tokenizing_rows += rows
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            state.tokenizer_pool, tokenize_request, model, inputs, state.config
        )
    finally:
        batcher.tokenizing -= 1
        batcher.tokenizing_rows -= rows


def text_rows(inputs: dict[str, np.ndarray]) -> int:
    """How many texts a request holds (its shape is checked when it is tokenized)."""
    texts = inputs[TEXT_INPUT]
    return int(texts.shape[0]) if texts.ndim else 1


def is_text(model: ServedModel, inputs: dict[str, np.ndarray]) -> bool:
    """True when a text model was sent raw strings (its 'text' input)."""
    return model.text is not None and TEXT_INPUT in inputs


TEXT_INPUT = "text"


def tokenize_request(
    model: ServedModel, inputs: dict[str, np.ndarray], config: ServeConfig
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
    text = model.text
    assert text is not None  # callers send raw text to text models only (is_text)
    encoded = tokenize(text.tokenizer, texts, text.max_length)
    if size > LARGE_TEXT:
        from slimserve.runtime import trim_memory

        trim_memory()
    return {k: v for k, v in encoded.items() if k in model.input_checks}


def refuse_long_texts(model: ServedModel, texts: list[str]) -> None:
    """A ProtocolError naming the first text over the model's token limit (for servers
    started with truncation off)."""
    text = model.text
    assert text is not None
    limit = text.max_length
    lengths = [len(ids) for ids in text.tokenizer(texts, truncation=False)["input_ids"]]
    for index, length in enumerate(lengths):
        if length > limit:
            raise ProtocolError(
                f"Text {index} is {length} tokens, over the model's {limit}-token limit, and "
                "the server does not truncate (--no-truncate): send shorter texts."
            )


LARGE_TEXT = 1 << 20  # bytes of text after which freed memory is handed back to the OS


_LOGGED_FAILURES: set[tuple[str, str, str]] = set()


def error_status(model: ServedModel, error: BaseException) -> tuple[int, str]:
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
    model: ServedModel, inputs: dict[str, np.ndarray], config: ServeConfig
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
    if model.text is not None or model.max_tokens is not None:
        check_sequence_lengths(model, inputs)
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


def check_sequence_lengths(model: ServedModel, inputs: dict[str, np.ndarray]) -> None:
    """A token sequence of no tokens, or of more than the model's positions, is refused
    per request (it would fail the batch it joins, and in OpenVINO the next run too)."""
    for name, array in inputs.items():
        if array.ndim != 2 or array.dtype.kind not in "iu":
            continue
        length = array.shape[1]
        if length == 0:
            raise ProtocolError(
                f"Input '{name}' has sequences of 0 tokens: send at least one token per row."
            )
        if model.max_tokens is not None and length > model.max_tokens:
            raise ProtocolError(
                f"Input '{name}' has sequences of {length} tokens, over the model's "
                f"{model.max_tokens}-token limit (its position table): send at most "
                f"{model.max_tokens} tokens per row, or send text and let the server "
                "truncate it."
            )
