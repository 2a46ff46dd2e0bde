"""What an OpenAI completions or chat request asks, checked (each error a 400 in OpenAI's
shape naming its field), and the text rules the answer follows: the prompt's tokens (the
chat template), and where a stop string cuts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimserve.serve.openai import OpenAIError

if TYPE_CHECKING:
    from slimserve.serve.llm_engine import LlmServed

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
MAX_N, MAX_STOPS, MAX_TOP_LOGPROBS = 8, 4, 20
COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed"}
COMMON |= {"stop", "n", "user", "frequency_penalty", "presence_penalty", "top_k"}
KEYS = {
    COMPLETIONS_PATH: COMMON | {"prompt", "logprobs", "echo", "suffix"},
    CHAT_PATH: COMMON | {"messages", "logprobs", "top_logprobs", "max_completion_tokens"},
}


def parse(
    path: str, request: Any, served: dict[str, LlmServed]
) -> tuple[LlmServed, dict[str, Any]]:
    """The served model and the request's checked fields."""
    if not isinstance(request, dict):
        raise OpenAIError(400, "The body must be a JSON object.")
    unknown = sorted(set(request) - KEYS[path])
    if unknown:
        raise OpenAIError(400, f"Unrecognized request argument: {unknown[0]}.", unknown[0])
    name = request.get("model")
    if name not in served:
        raise OpenAIError(
            404,
            f"The model '{name}' does not exist: this server generates with "
            f"{', '.join(served) or 'no model'}.",
            "model",
            "model_not_found",
        )
    for key in ("frequency_penalty", "presence_penalty"):
        if request.get(key) not in (None, 0, 0.0):
            raise OpenAIError(400, f"'{key}' is not supported; leave it out or send 0.", key)
    if request.get("echo") or request.get("suffix"):
        raise OpenAIError(400, "'echo' and 'suffix' are not supported.", "echo")
    temperature = number(request, "temperature", 1.0, 0.0, 2.0)
    top_p = number(request, "top_p", 1.0, 0.0, 1.0)
    n = int(number(request, "n", 1, 1, MAX_N))
    stops = request.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise OpenAIError(
            400, f"'stop' is a string or up to {MAX_STOPS} non-empty strings.", "stop"
        )
    seed = request.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise OpenAIError(400, "'seed' must be an integer.", "seed")
    return served[name], {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": int(number(request, "top_k", 0, 0, 1000)),
        "n": n,
        "stop": stops,
        "seed": seed,
        "logprobs": logprobs_asked(path, request),
        "stream": bool(request.get("stream")),
        "usage_in_stream": bool((request.get("stream_options") or {}).get("include_usage")),
        "max_tokens": request.get("max_completion_tokens", request.get("max_tokens")),
    }


def prompt_tokens(path: str, request: dict[str, Any], model: LlmServed) -> list[int]:
    """The prompt's tokens: the text as given, or the messages in the model's own chat
    template (a conversation the template cannot render is a 400)."""
    if path == COMPLETIONS_PATH:
        prompt = request.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [int(t) for t in prompt]
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError(
                400, "'prompt' must be one non-empty string (or token ids).", "prompt"
            )
        return list(model.tokenizer(prompt)["input_ids"])
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty list.", "messages")
    plain = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(400, f"messages[{number}] needs a 'role'.", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise OpenAIError(400, f"messages[{number}]: only text parts.", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise OpenAIError(400, f"messages[{number}].content must be text.", "messages")
        plain.append({"role": message["role"], "content": content})
    try:
        text = model.tokenizer.apply_chat_template(
            plain, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:
        raise OpenAIError(
            400, f"The model's chat template cannot render these messages: {exc}", "messages"
        ) from None
    return [int(t) for t in model.tokenizer(str(text))["input_ids"]]


def logprobs_asked(path: str, request: dict[str, Any]) -> int | None:
    if path == CHAT_PATH:
        if not request.get("logprobs"):
            if request.get("top_logprobs"):
                raise OpenAIError(400, "'top_logprobs' needs 'logprobs': true.", "top_logprobs")
            return None
        return int(number(request, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS))
    value = request.get("logprobs")
    return None if value is None else int(number(request, "logprobs", 0, 0, 5))


def number(request: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = request.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise OpenAIError(400, f"'{key}' must be a number from {low:g} to {high:g}.", key)
    return float(value)


def first_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the first stop string begins in ``text`` (searching from where it could
    start given what was already sent), or None."""
    found = [i for s in stops if (i := text.find(s, max(0, sent - len(s) + 1))) >= 0]
    return min(found) if found else None


def settled(text: str, stops: list[str]) -> str:
    """``text`` less what may still change: an unfinished character at its end, and a
    tail that could be the beginning of a stop string."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[end - size : end] == stop[:size]:
                end -= size
                break
    return text[:end]
