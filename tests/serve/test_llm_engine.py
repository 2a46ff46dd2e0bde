"""The decoder-LM engine directly: prompt lookup decoding gives exactly the greedy tokens
of plain decoding, on the tiny random Llama artifact."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from slimserve.artifact import load_artifact
from slimserve.serve.llm_engine import LlmEngine
from slimserve.serve.llm_sampling import Sampling, Token, prompt_lookup


def test_prompt_lookup_proposes_what_followed_the_latest_earlier_match() -> None:
    history = [1, 2, 3, 4, 5, 9, 2, 3, 4, 6, 7, 8, 2, 3, 4]
    assert prompt_lookup(history, 2) == [6, 7]  # the latest earlier "2 3 4"
    assert prompt_lookup([1, 2, 3, 9, 2, 3], 4) == [9, 2, 3]  # a shorter match, cut at the end
    assert prompt_lookup([1, 2, 3, 9, 3], 4) == []  # one token alone is no match
    assert prompt_lookup([1, 2, 3], 4) == []  # never seen before
    assert prompt_lookup([7], 4) == []


def generate(engine: LlmEngine, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """Every prompt's tokens, submitted together, in order."""
    out: list[list[int]] = [[] for _ in prompts]
    finished = threading.Semaphore(0)

    def collect(row: int):  # type: ignore[no-untyped-def]
        def emit(token: Token) -> None:
            assert token.token >= 0, token.finish
            out[row].append(token.token)
            if token.finish:
                finished.release()

        return emit

    with engine.lock:  # re-entrant: the engine admits them together, in one step
        for row, prompt in enumerate(prompts):
            engine.submit(prompt, sampling, collect(row))
    for _ in prompts:
        assert finished.acquire(timeout=60)
    return out


@pytest.fixture(scope="module")
def folder(llm_artifact: Path) -> Path:
    return load_artifact(llm_artifact).model.folder  # type: ignore[attr-defined,no-any-return]


def test_drafts_keep_exactly_the_greedy_tokens_of_plain_decoding(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drafts right and wrong: the accepted ones, the rejected ones and the rolled-back
    cache give plain decoding's tokens (a float build: the same arithmetic either way)."""
    from slimserve.serve import llm_engine

    prompts = [[5, 6, 7, 8, 9] * 12, [11, 12, 13] * 20 + [40, 41]]
    greedy = Sampling(max_tokens=40, temperature=0)
    plain = LlmEngine(folder, slots=2, slot_tokens=128)
    lookup = LlmEngine(folder, slots=2, slot_tokens=128, lookup_tokens=6)
    try:
        expected = [generate(plain, [p], greedy)[0] for p in prompts]

        def drafter(history: list[int], count: int) -> list[int]:
            """The true continuation, every third token of it wrong."""
            row = 0 if history[: len(prompts[0])] == prompts[0] else 1
            done = len(history) - len(prompts[row])
            truth = expected[row][done : done + count]
            return [t if (done + i) % 3 else t + 1 for i, t in enumerate(truth)]

        monkeypatch.setattr(llm_engine, "prompt_lookup", drafter)
        assert [generate(lookup, [p], greedy)[0] for p in prompts] == expected
        assert 0 < lookup.stats["accepted"] < lookup.stats["drafted"]  # both kinds happened
        assert lookup.stats["steps"] < plain.stats["steps"]  # fewer model runs
        # two at once decode together without drafts (until one ends): the same tokens
        drafted = lookup.stats["drafted"]
        assert generate(lookup, prompts, greedy) == expected
        if len(expected[0]) == len(expected[1]):  # they ended together: never one alone
            assert lookup.stats["drafted"] == drafted
        drafted = lookup.stats["drafted"]
        sampled = Sampling(max_tokens=20, temperature=1.0, seed=3)
        assert generate(lookup, prompts[:1], sampled) == generate(plain, prompts[:1], sampled)
        assert lookup.stats["drafted"] == drafted  # a sampled sequence gets no drafts
    finally:
        plain.close()
        lookup.close()


def test_prompt_lookup_tokens_out_of_range_are_refused() -> None:
    from pydantic import ValidationError

    from slimserve.serve.config import ServeConfig

    with pytest.raises(ValidationError, match="llm_lookup_tokens"):
        ServeConfig(llm_lookup_tokens=65)


def test_prompts_on_openvino_give_the_tokens_of_onnx_runtime(folder: Path) -> None:
    """Prompt chunks on OpenVINO (float32), decode steps on ONNX Runtime: the same greedy
    tokens as ONNX Runtime alone, one sequence or two at once, prompts of several chunks
    (the earlier chunks' cache read back by OpenVINO) or one."""
    prompts = [list(range(3, 43)), [7, 8, 9, 10, 11, 12, 13]]
    greedy = Sampling(max_tokens=20, temperature=0)
    plain = LlmEngine(folder, slots=2, slot_tokens=128, chunk_tokens=16, idle_chunk_tokens=16)
    mixed = LlmEngine(
        folder, slots=2, slot_tokens=128, chunk_tokens=16, idle_chunk_tokens=16, prefill="f32"
    )
    try:
        expected = [generate(plain, [p], greedy)[0] for p in prompts]
        assert [generate(mixed, [p], greedy)[0] for p in prompts] == expected
        assert generate(mixed, prompts, greedy) == expected
    finally:
        plain.close()
        mixed.close()
