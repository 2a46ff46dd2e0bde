"""How the engine picks tokens: sampling from a row's logits, and prompt lookup's drafts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """How a sequence's tokens are chosen and when it ends."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: the chosen token's and the top k's


@dataclass
class Token:
    """One generated token: its id, its log-probability and the top alternatives (when
    asked), and why the sequence ended with it (None while it goes on)."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    finish: str | None = None


def prompt_lookup(history: list[int], count: int, longest: int = 3, shortest: int = 2) -> list[int]:
    """Up to ``count`` tokens that followed the latest earlier occurrence of
    ``history``'s last ``longest`` tokens (then fewer, down to ``shortest``) in
    ``history``; none when they never occurred before. One-token matches are not used:
    on text with nothing to copy they proposed drafts that were mostly rejected, which
    cost more than they saved (BENCHMARKS.md, llm-lookup)."""
    tokens = np.asarray(history, np.int64)
    for size in range(min(longest, len(tokens) - 1), shortest - 1, -1):
        tail = tokens[-size:]
        starts = np.flatnonzero(tokens[: len(tokens) - size] == tail[0])
        for start in starts[::-1]:
            if np.array_equal(tokens[start : start + size], tail):
                return [int(t) for t in tokens[start + size : start + size + count]]
    return []


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> Token:
    """The next token: greedy at temperature 0, else sampled from the temperature-scaled
    distribution cut to its top_k and top_p; with its log-probability (of the model's
    distribution, as OpenAI reports it) and the top alternatives when asked."""
    if sampling.temperature <= 0:
        chosen = int(np.argmax(logits))
    else:
        scaled = logits.astype(np.float64) / sampling.temperature
        order = np.argsort(-scaled)
        if sampling.top_k > 0:
            order = order[: sampling.top_k]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if sampling.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        chosen = int(order[rng.choice(len(order), p=probs)])
    if sampling.logprobs is None:
        return Token(chosen)
    shifted = logits.astype(np.float64) - logits.max()
    log_probs = shifted - np.log(np.exp(shifted).sum())
    count = sampling.logprobs
    top: list[int] = list(np.argpartition(-log_probs, count)[:count]) if count else []
    ranked = sorted(((int(t), float(log_probs[t])) for t in top), key=lambda p: -p[1])
    return Token(chosen, float(log_probs[chosen]), ranked)
