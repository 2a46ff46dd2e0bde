"""OpenAI's embeddings API on the V2 server's own port, for text artifacts:
``POST /v1/embeddings`` and ``GET /v1/models``, in OpenAI's request, response and error
shapes, so the ``openai`` SDK, LangChain and LlamaIndex clients work unchanged.

An embeddings request goes the way a V2 text request goes: tokenized in the tokenizer's
thread, then through the model's batcher (so it merges with V2 and gRPC requests), the
same limits and the same errors, answered as OpenAI answers them.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from slimserve.serve.repository import ServedModel
from slimserve.serve.state import ServerState
from slimserve.serve.submit import TEXT_INPUT, error_status, infer, tokenize_text
from slimserve.serve.v2codec import ProtocolError

EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"
MAX_INPUTS = 2048
"""Texts in one request, as OpenAI caps it."""
KNOWN_KEYS = {"input", "model", "encoding_format", "dimensions", "user"}


class OpenAIError(Exception):
    """A request error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    import orjson

    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def embedding_models(state: ServerState) -> list[ServedModel]:
    """The latest version of each served model that produces embeddings."""
    found = []
    for name in state.models:
        model = state.find(name, None)
        if model.text is not None and model.text.task == "feature-extraction":
            found.append(model)
    return found


def models_body(state: ServerState) -> bytes:
    """``GET /v1/models``: the embedding models and decoder LMs, as OpenAI lists models."""
    import orjson

    created = int(state.started_at)
    names = [m.name for m in embedding_models(state)] + sorted(state.llms)
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "slimserve"}
        for name in names
    ]
    return orjson.dumps({"object": "list", "data": data})


def parse_request(body: bytes) -> dict[str, Any]:
    """The request's fields, checked: a list of texts, the model, the encoding."""
    import orjson

    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OpenAIError(400, "The body is not JSON.") from None
    if not isinstance(request, dict):
        raise OpenAIError(400, "The body must be a JSON object.")
    unknown = sorted(set(request) - KNOWN_KEYS)
    if unknown:
        raise OpenAIError(400, f"Unrecognized request argument: {unknown[0]}.", unknown[0])
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "'model' is required: the name of a served model.", "model")
    texts = request.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise OpenAIError(400, "'input' must be a string or a non-empty list of strings.", "input")
    if not all(isinstance(t, str) for t in texts):
        raise OpenAIError(
            400,
            "'input' holds token arrays or non-strings; this server tokenizes with the "
            "model's own tokenizer: send strings.",
            "input",
        )
    if len(texts) > MAX_INPUTS:
        raise OpenAIError(400, f"'input' has {len(texts)} texts, over {MAX_INPUTS}.", "input")
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise OpenAIError(400, f"input[{empty}] is an empty string.", "input")
    encoding = request.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise OpenAIError(
            400, f"'encoding_format' is float or base64, not {encoding!r}.", "encoding_format"
        )
    dimensions = request.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
        raise OpenAIError(400, "'dimensions' must be a positive integer.", "dimensions")
    return {"model": model, "texts": texts, "encoding": encoding, "dimensions": dimensions}


def fit_budget(tokenized: dict[str, np.ndarray], budget: int | None) -> list[dict[str, Any]]:
    """The tokenized texts in consecutive slices of at most ``budget`` padded tokens
    each, every slice cut to its own longest text (one text alone may still be over)."""
    from slimserve.data import padded_width

    rows, width = next(iter(tokenized.values())).shape
    if budget is None or rows * width <= budget or rows == 1:
        return [tokenized]
    half = rows // 2
    parts = []
    for piece in (slice(0, half), slice(half, rows)):
        part = {k: v[piece] for k, v in tokenized.items()}
        mask = part.get("attention_mask")
        if mask is not None:
            cut = padded_width(mask)
            part = {k: v[:, :cut] for k, v in part.items()}
        parts += fit_budget(part, budget)
    return parts


async def answer_embeddings(state: ServerState, body: bytes) -> tuple[int, bytes]:
    """(status, JSON body) for ``POST /v1/embeddings``."""
    started = time.perf_counter()
    name = "-"
    try:
        request = parse_request(body)
        name = request["model"]
        payload = await _embed(state, request)
        status = 200
    except OpenAIError as exc:
        status, payload = exc.status, error_body(exc.status, str(exc), exc.param, exc.code)
    if name in state.models:
        state.observe(name, status, time.perf_counter() - started, "openai")
    return status, payload


async def _embed(state: ServerState, request: dict[str, Any]) -> bytes:
    import orjson

    try:
        model = state.find(request["model"], None)
    except LookupError as exc:
        raise OpenAIError(404, str(exc), "model", "model_not_found") from None
    if model.text is None or model.text.task != "feature-extraction":
        raise OpenAIError(
            400,
            f"Model '{model.name}' does not produce embeddings (it is not a text "
            "feature-extraction artifact); use its V2 route.",
            "model",
        )
    output = model.outputs[0]
    width = output["shape"][-1] if isinstance(output["shape"][-1], int) else None
    dimensions = request["dimensions"]
    if dimensions is not None and width is not None and dimensions != width:
        raise _wrong_dimensions(model, width)
    texts = request["texts"]
    # The limit holds per request, as on the V2 route, not per chunk of texts.
    chars = sum(len(t) for t in texts)
    if chars > state.config.max_text_chars:
        raise OpenAIError(
            413,
            f"The request holds {chars} characters of text, over the "
            f"{state.config.max_text_chars}-character limit (--max-text-chars). Send fewer or "
            "shorter texts per request.",
            "input",
        )
    rows = state.config.request_rows
    vectors, tokens = [], 0
    try:
        for start in range(0, len(texts), rows):  # one batcher request per batch of texts
            chunk = {TEXT_INPUT: np.array(texts[start : start + rows], dtype=object)}
            tokenized = await tokenize_text(state, model, chunk)
            mask = tokenized.get("attention_mask")
            counted = mask if mask is not None else next(iter(tokenized.values()))
            tokens += int(np.count_nonzero(counted))
            for part in fit_budget(tokenized, state.config.max_batch_tokens):
                outputs = await infer(state, model, part)
                vectors.append(np.asarray(outputs[output["name"]], dtype=np.float32))
    except ProtocolError as exc:
        status, message = error_status(model, exc)
        raise OpenAIError(status, message, "input") from None
    except Exception as exc:
        status, message = error_status(model, exc)
        raise OpenAIError(status, message) from None
    embeddings = np.concatenate(vectors)
    if dimensions is not None and dimensions != embeddings.shape[1]:  # width known only now
        raise _wrong_dimensions(model, embeddings.shape[1])
    if request["encoding"] == "base64":  # little-endian float32, as OpenAI encodes
        values: list[Any] = [
            base64.b64encode(row.astype("<f4").tobytes()).decode() for row in embeddings
        ]
    else:
        values = embeddings.tolist()
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)
            ],
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _wrong_dimensions(model: ServedModel, width: int) -> OpenAIError:
    return OpenAIError(
        400,
        f"Model '{model.name}' gives {width}-dimensional embeddings and was not trained for "
        f"other sizes (Matryoshka): leave 'dimensions' out or send {width}.",
        "dimensions",
    )
