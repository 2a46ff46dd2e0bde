"""Prompt lookup decoding (`serve --llm-lookup-tokens K`) on SmolLM2-135M: decode speed of
one sequence with drafts of K tokens from its own prompt, against plain decoding, on
input-grounded prompts (the model asked to repeat or quote a passage) and on open prompts
(nothing to copy: what drafts cost when they miss). Interleaved rounds, 2 threads.

    python benchmarks/llm_lookup.py [--update BENCHMARKS.md] [--rounds 3]

The artifact is the smollm2 file's own Q4_1 blocks imported exactly (`weights: gguf`,
the one llm_serve.py builds). Passages: Python's documentation (pydoc_data.topics), a
part the recipes never calibrate on. Decode tokens/s counts the tokens after the first
over the time after the first (prefill excluded); greedy, 128 new tokens at most, every
K's tokens checked equal to plain decoding's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _record import update
from llm_serve import build_artifact

LOOKUPS = (0, 4, 8, 16)
NEW_TOKENS = 128


def prompts(tokenizer: Any) -> dict[str, list[list[int]]]:
    import pydoc_data.topics as topics

    passages = [text[:600] for text in sorted(topics.topics.values(), key=len)[-40:-32]]
    asks = {
        "grounded": [f"Repeat this text word for word:\n\n{p}" for p in passages],
        "open": [
            "Write a short story about a lighthouse keeper.",
            "Explain why the sky is blue.",
            "Give me three tips for learning a new language.",
            "What is the difference between a list and a tuple?",
            "Describe a good breakfast.",
            "Why do cats purr?",
            "Write a poem about autumn rain.",
            "How does a bicycle stay upright?",
        ],
    }

    def chat(text: str) -> list[int]:
        messages = [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(rendered)["input_ids"])

    return {kind: [chat(t) for t in texts] for kind, texts in asks.items()}


def one(engine: Any, prompt: list[int]) -> tuple[list[int], float]:
    """The greedy tokens of ``prompt`` and the decode tokens/s after the first token."""
    from slimserve.serve.llm_sampling import Sampling

    tokens: list[int] = []
    times: list[float] = []
    done = threading.Event()

    def emit(token: Any) -> None:
        tokens.append(token.token)
        times.append(time.perf_counter())
        if token.finish:
            done.set()

    engine.submit(prompt, Sampling(NEW_TOKENS, 0.0), emit)
    done.wait()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return tokens, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--update", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from slimserve.core.cpu import cpu_features
    from slimserve.models.hf import load_tokenizer
    from slimserve.serve.llm_engine import LlmEngine

    artifact = build_artifact()
    folder = artifact / "llm"
    asks = prompts(load_tokenizer(folder))
    engines = {k: LlmEngine(folder, 2, 1, 1024, 512, lookup_tokens=k) for k in LOOKUPS}
    rates: dict[tuple[str, int], list[float]] = {}
    drafted: dict[tuple[str, int], list[int]] = {}
    differ: dict[str, list[int]] = {}  # kind -> where a K's tokens first left plain's
    for engine in engines.values():  # warm-up: every engine's first runs
        one(engine, asks["open"][0])
    for round_ in range(args.rounds):
        for kind, batch in asks.items():
            for index, prompt in enumerate(batch):
                plain: list[int] | None = None
                for k, engine in engines.items():
                    engine.stats.update(drafted=0, accepted=0)
                    tokens, rate = one(engine, prompt)
                    plain = tokens if k == 0 else plain
                    if plain is not None and tokens != plain:
                        pairs = zip(tokens, plain, strict=False)
                        first = next(i for i, (a, b) in enumerate(pairs) if a != b)
                        differ.setdefault(kind, []).append(first)
                    rates.setdefault((kind, k), []).append(rate)
                    counts = [engine.stats["drafted"], engine.stats["accepted"]]
                    sums = drafted.setdefault((kind, k), [0, 0])
                    drafted[(kind, k)] = [a + b for a, b in zip(sums, counts, strict=True)]
                print(f"round {round_ + 1} {kind} {index + 1}/{len(batch)}", flush=True)
    for engine in engines.values():
        engine.close()
    flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
    lines = [
        "| prompts | lookup K | decode tok/s (median) | vs plain | drafts accepted |",
        "|---|---|---|---|---|",
    ]
    for kind in asks:
        base = statistics.median(rates[(kind, 0)])
        for k in LOOKUPS:
            rate = statistics.median(rates[(kind, k)])
            made, taken = drafted[(kind, k)]
            share = f"{taken / made:.0%} of {made}" if made else "—"
            lines.append(f"| {kind} | {k or 'off'} | {rate:.1f} | {rate / base:.2f}x | {share} |")
    runs = args.rounds * (len(LOOKUPS) - 1)
    equal = "; ".join(
        f"{kind}: {runs * len(asks[kind]) - len(differ.get(kind, []))} of "
        f"{runs * len(asks[kind])} runs token for token"
        + (
            f", the others first differ after {statistics.median(differ[kind]):.0f} tokens (median)"
            if differ.get(kind)
            else ""
        )
        for kind in asks
    )
    body = "\n".join(
        [
            "Prompt lookup decoding in slimserve's engine (`serve --llm-lookup-tokens K`), one "
            "sequence, SmolLM2-135M-Instruct with the source's own Q4_1 blocks (gguf import). "
            f"CPU flags: {flags}. 2 threads; {args.rounds} interleaved rounds of 8 prompts "
            "each: grounded = asked to repeat a 600-character passage of Python's "
            "documentation, open = questions with nothing to copy. Decode tok/s excludes "
            f"the first token (prefill); greedy, up to {NEW_TOKENS} new tokens. Drafts are "
            "one-token-at-a-time exact on a float build (tests/serve/test_llm_engine.py); "
            "this build computes in int8 (MatMulNBits accuracy level 4), whose kernels for "
            "several rows (the drafts' verification, like a prefill) round differently "
            "from the one-row kernel, so a near-tie can go the other way and the text "
            f"continue differently from there. Equal to plain decoding: {equal}.",
            "",
            *lines,
            "",
            "Command: `python benchmarks/llm_lookup.py --update BENCHMARKS.md` (in `make bench`).",
        ]
    )
    print(body)
    if args.update:
        update(args.update, "llm-lookup", body)


if __name__ == "__main__":
    main()
