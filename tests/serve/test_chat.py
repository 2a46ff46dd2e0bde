"""OpenAI completions and chat on a decoder LM artifact (a tiny random Llama), through the
official ``openai`` client against a real server: plain and streamed, n, seed, stop,
logprobs, usage, the chat template, errors in OpenAI's shape, a disconnect freeing its
slot, and concurrent streams equal to the same requests alone."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("onnxruntime_genai")
openai = pytest.importorskip("openai")

import slimserve as ss  # noqa: E402
from slimserve.runtime.generation import GenerationParams  # noqa: E402
from tests.serve.conftest import running, start  # noqa: E402

MODEL = "tiny-llm"
LIMITS = {"llm_slots": 4, "llm_slot_tokens": 256, "llm_max_tokens": 64}


@pytest.fixture(scope="module")
def artifact(llm_artifact: Path) -> Path:
    pytest.importorskip("onnxruntime_genai")
    return llm_artifact


@pytest.fixture(scope="module")
def server(artifact: Path) -> Iterator[str]:
    srv, thread, url = start(artifact, **LIMITS)
    yield f"http://{url}"
    srv.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


def client(url: str) -> object:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def greedy(artifact: Path, prompt: list[int], count: int) -> str:
    """onnxruntime-genai's greedy tokens, as text the way the server writes it."""
    from slimserve.models.hf import load_tokenizer

    generator = ss.load_generator(artifact)
    tokens = generator.generate([prompt], GenerationParams(max_new_tokens=count))[0]
    return str(load_tokenizer(artifact / "llm").decode(tokens, skip_special_tokens=True))


def test_chat_plain_and_streamed_is_the_generators_greedy_text(server: str, artifact: Path) -> None:
    api = client(server)
    assert MODEL in [m.id for m in api.models.list()]  # type: ignore[attr-defined]
    generator = ss.load_generator(artifact)
    expected = greedy(artifact, generator.encode(generator.chat_prompt("hello there")), 12)
    messages = [{"role": "user", "content": "hello there"}]
    answer = api.chat.completions.create(  # type: ignore[attr-defined]
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason in ("length", "stop")
    assert answer.usage.completion_tokens <= 12 and answer.usage.prompt_tokens > 3
    chunks = list(
        api.chat.completions.create(  # type: ignore[attr-defined]
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens and not chunks[-1].choices


def test_completions_n_seed_logprobs_and_stop(server: str) -> None:
    api = client(server)
    sampled = {"model": MODEL, "prompt": "the cat", "max_tokens": 10, "temperature": 0.9}
    first = api.completions.create(**sampled, n=2, seed=11)  # type: ignore[attr-defined]
    again = api.completions.create(**sampled, n=2, seed=11)  # type: ignore[attr-defined]
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # same seed
    scored = api.completions.create(  # type: ignore[attr-defined]
        model=MODEL, prompt="the cat", max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) <= 3 for top in logprobs.top_logprobs)
    assert "".join(logprobs.tokens).startswith(scored.choices[0].text[:1])
    whole = (
        api.completions.create(  # type: ignore[attr-defined]
            model=MODEL, prompt="the cat", max_tokens=24, temperature=0
        )
        .choices[0]
        .text
    )
    stop = next(
        (whole[i : i + 2] for i in range(3, len(whole) - 2) if whole[i : i + 2].strip()), None
    )
    if stop is None:
        pytest.skip("the random model's greedy text has no two-character stop to cut at")
    cut = api.completions.create(  # type: ignore[attr-defined]
        model=MODEL, prompt="the cat", max_tokens=24, temperature=0, stop=[stop]
    ).choices[0]
    assert cut.text == whole[: whole.index(stop)] and cut.finish_reason == "stop"


def test_errors_come_in_openais_shape(server: str) -> None:
    api = client(server)
    with pytest.raises(openai.BadRequestError, match=r"maximum context length is 256 tokens"):
        api.completions.create(model=MODEL, prompt="x" * 300, max_tokens=8)  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="'temperature' must be a number from 0 to 2"):
        api.completions.create(model=MODEL, prompt="a", temperature=3)  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError, match="over this server's 64"):
        api.completions.create(model=MODEL, prompt="a", max_tokens=65)  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "a"}])  # type: ignore[attr-defined]
    bad = httpx.post(f"{server}/v1/chat/completions", json={"model": MODEL, "messages": "hi"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"


def test_a_token_and_a_full_queue_are_refused(artifact: Path) -> None:
    with running(artifact, token="secret", llm_slots=1, llm_max_queue=0, **_rest()) as (_, url):
        api = openai.OpenAI(base_url=f"http://{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            api.completions.create(model=MODEL, prompt="a", max_tokens=2)
        good = openai.OpenAI(base_url=f"http://{url}/v1", api_key="secret", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="a", max_tokens=2).choices
        # two sequences (n=2) for one slot and no queue: the second cannot wait
        with pytest.raises(openai.RateLimitError, match="busy: all 1 slots are taken"):
            good.completions.create(model=MODEL, prompt="b", max_tokens=8, n=2)


def _rest() -> dict[str, int]:
    return {k: v for k, v in LIMITS.items() if k != "llm_slots"}


def sequences(url: str, state: str = "running") -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'slimserve_sequences{{model="tiny-llm",state="{state}"}} (\S+)', text)
    assert found, text[-2000:]
    return float(found.group(1))


def test_a_client_that_leaves_frees_its_slot(artifact: Path) -> None:
    # one prompt token per step: a long prompt keeps its slot for ~480 steps, and a chat
    # stream's first event (the role) comes before them
    limits = LIMITS | {"llm_slot_tokens": 512, "llm_chunk_tokens": 1, "llm_idle_chunk_tokens": 1}
    with running(artifact, **limits) as (_, url):
        server = f"http://{url}"
        message = {"role": "user", "content": "word " * 95}
        body = {"model": MODEL, "messages": [message], "max_tokens": 8, "stream": True}
        with httpx.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
            assert next(response.iter_lines()).startswith("data: ")
        left = time.monotonic()
        while not sequences(server, "cancelled") and time.monotonic() < left + 5:
            time.sleep(0.005)
        # cancelled while it ran (a sequence that ends by itself is not counted)
        assert sequences(server, "cancelled") == 1 and sequences(server) == 0


def test_concurrent_streams_give_what_each_gives_alone(server: str) -> None:
    api = client(server)
    prompts = ["the dog", "a much longer prompt about the sea and its waves"]

    def ask(prompt: str) -> str:
        return str(
            api.completions.create(  # type: ignore[attr-defined]
                model=MODEL, prompt=prompt, max_tokens=20, temperature=0
            )
            .choices[0]
            .text
        )

    alone = [ask(p) for p in prompts]
    together: list[str] = ["", ""]

    def run(index: int) -> None:
        stream = api.completions.create(  # type: ignore[attr-defined]
            model=MODEL, prompt=prompts[index], max_tokens=20, temperature=0, stream=True
        )
        together[index] = "".join(c.choices[0].text for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert together == alone


def test_the_v2_generate_extension_gives_the_completions_text(server: str) -> None:
    api = client(server)
    expected = (
        api.completions.create(  # type: ignore[attr-defined]
            model=MODEL, prompt="the cat", max_tokens=10, temperature=0
        )
        .choices[0]
        .text
    )
    body = {"text_input": "the cat", "parameters": {"max_tokens": 10, "temperature": 0}}
    whole = httpx.post(f"{server}/v2/models/{MODEL}/generate", json=body)
    assert whole.status_code == 200, whole.text
    assert whole.json() == {"model_name": MODEL, "model_version": "1", "text_output": expected}
    with httpx.stream("POST", f"{server}/v2/models/{MODEL}/generate_stream", json=body) as out:
        events = [line[6:] for line in out.iter_lines() if line.startswith("data: ")]
    assert "".join(httpx.Response(200, content=e).json()["text_output"] for e in events) == expected
    bad = httpx.post(f"{server}/v2/models/{MODEL}/generate", json={"text_input": 3})
    assert bad.status_code == 400 and "text_input" in bad.json()["error"]
    long = {"text_input": "x" * 600, "max_tokens": 8}
    over = httpx.post(f"{server}/v2/models/{MODEL}/generate", json=long)
    assert over.status_code == 400 and "maximum context length" in over.json()["error"]


def test_a_body_over_the_limit_is_413_in_openais_shape(artifact: Path) -> None:
    with running(artifact, max_body_bytes=1024, **LIMITS) as (_, url):
        big = {"model": MODEL, "prompt": "y" * 2000}
        refused = httpx.post(f"http://{url}/v1/completions", json=big)
        assert (
            refused.status_code == 413 and "1024-byte limit" in refused.json()["error"]["message"]
        )


def test_deploy_names_what_serves_an_llm_artifact(artifact: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app

    triton = CliRunner().invoke(app, ["deploy", "triton", str(artifact), str(tmp_path)])
    kserve = CliRunner().invoke(
        app, ["deploy", "kserve", str(artifact), "--storage-uri", "s3://bucket/tiny"]
    )
    for result in (triton, kserve):
        assert result.exit_code != 0
        assert "decoder LM artifact" in result.output and "slimserve serve" in result.output


def test_loadtest_streams_chat_and_reports_ttft(server: str) -> None:
    import json

    from typer.testing import CliRunner

    from slimserve.cli import app

    line = ["loadtest", server, "-m", MODEL, "--route", "chat", "-c", "2", "-n", "4"]
    result = CliRunner().invoke(app, [*line, "--max-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["requests"] == 4 and summary["errors"] == 0
    assert summary["tokens"] > 0 and summary["tokens_per_s"] > 0
    assert 0 < summary["ttft_p50_ms"] <= summary["ttft_p99_ms"]
    wrong = CliRunner().invoke(app, ["loadtest", server, "-m", "nope", "--route", "chat"])
    assert wrong.exit_code != 0 and "does not exist" in wrong.output
