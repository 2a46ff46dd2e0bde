"""Continuous batching for a decoder LM artifact: sequences join and leave the running
batch between decode steps, prompts are prefilled in bounded chunks between them, and the
KV cache is one preallocated buffer per layer with a row (slot) per sequence.

onnxruntime-genai's Generator decodes a fixed batch, and its Engine batches continuously
only with paged attention, which its builder makes for CUDA alone; so this loop drives the
builder's ONNX model in ONNX Runtime itself. The model's GroupQueryAttention reads each
row's length from the attention mask and writes new keys and values in place
(``past_present_share_buffer``): a row's cache is written where its own sequence ends,
whatever the other rows hold, so a prefill of one row (its slice of the buffer) and a
decode step of all rows use the same buffers, bound by IO binding without copies.

Prompt lookup (``lookup_tokens``): a greedy sequence whose last tokens occurred earlier in
its prompt or output proposes the tokens that followed them there; the decode step runs
them with its next token and keeps those the model itself would have chosen (exact for
greedy decoding). Only while one sequence decodes: ONNX Runtime's GroupQueryAttention
takes several new tokens per row after a cache at batch 1 only. Rejected drafts leave
keys and values past the row's length, which the next step overwrites: rolling back is
setting the length.

Every public method is thread-safe; ``emit`` callbacks run on the engine's thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimserve.core.errors import SlimserveError
from slimserve.serve.llm_sampling import Sampling, Token, choose, prompt_lookup


class EngineFull(SlimserveError):
    """The engine's queue is full: the client should retry later (HTTP 429)."""


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    sampling: Sampling
    emit: Callable[[Token], None]
    rng: np.random.Generator
    slot: int = -1
    length: int = 0  # tokens in the cache
    generated: int = 0
    next_token: int = -1
    tokens: list[int] = field(default_factory=list)  # generated so far (prompt lookup)
    cancelled: bool = False
    abandoned: bool = False  # cancelled because its client left
    queued_at: float = 0.0
    first_token_at: float = 0.0

    @property
    def prefilling(self) -> bool:
        return self.length < len(self.prompt)


class LlmEngine:
    """One decoder LM: its ONNX Runtime session, KV buffers and the batching thread."""

    def __init__(
        self,
        folder: Path,
        threads: int = 2,
        slots: int = 16,
        slot_tokens: int = 1024,
        chunk_tokens: int = 128,
        max_queue: int = 64,
        lookup_tokens: int = 0,
        prefill: str | None = None,
        idle_chunk_tokens: int = 512,
    ) -> None:
        import onnxruntime as ort

        genai = json.loads((folder / "genai_config.json").read_text())["model"]
        decoder = genai["decoder"]
        self.context_length = min(int(genai["context_length"]), slot_tokens)
        eos = genai["eos_token_id"]
        self.eos = {int(t) for t in (eos if isinstance(eos, list) else [eos])}
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / decoder["filename"]), options, providers=["CPUExecutionProvider"]
        )
        self.ort = ort
        shape = (slots, int(decoder["num_key_value_heads"]), self.context_length)
        self.names = [
            (f"past_key_values.{i}.{kind}", f"present.{i}.{kind}")
            for i in range(int(decoder["num_hidden_layers"]))
            for kind in ("key", "value")
        ]
        self.cache = [np.zeros((*shape, int(decoder["head_size"])), np.float32) for _ in self.names]
        self.slots: list[Sequence | None] = [None] * slots
        self.queue: deque[Sequence] = deque()
        self.max_queue, self.chunk_tokens = max_queue, chunk_tokens
        # While no sequence decodes, nothing waits on a prompt: it goes in chunks this large
        # (bounded: ONNX Runtime returns every position's logits, ~100 MB per 512 tokens).
        self.idle_chunk_tokens = max(idle_chunk_tokens, chunk_tokens)
        self.lookup_tokens = lookup_tokens
        self.lock = threading.Condition()
        self.running = True
        self.stats = {"steps": 0, "generated": 0, "cancelled": 0, "drafted": 0, "accepted": 0}
        # Prompt chunks on OpenVINO in this precision (the artifact's llm_prefill record,
        # chosen by measurement: slimserve.llm_prefill); None: in ONNX Runtime.
        self.prefill = None
        if prefill is not None:
            from slimserve.runtime.openvino_prefill import OpenvinoPrefill

            try:
                self.prefill = OpenvinoPrefill(folder, prefill, threads)  # type: ignore[arg-type]
            except Exception as exc:  # another OpenVINO than the one that measured it
                logging.getLogger("slimserve.serve").warning(
                    "%s: OpenVINO could not compile the model for prompts (%s); they run in "
                    "ONNX Runtime.",
                    folder,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                )
        self.thread = threading.Thread(target=self._loop, name="slimserve-llm", daemon=True)
        self.thread.start()

    # -- the client side -------------------------------------------------------------
    def submit(
        self, prompt: list[int], sampling: Sampling, emit: Callable[[Token], None]
    ) -> Sequence:
        """Queue a sequence (a ValueError when it cannot fit a slot, EngineFull when the
        queue is full); its tokens arrive through ``emit``."""
        return self.submit_all(prompt, [(sampling, emit)])[0]

    def submit_all(
        self, prompt: list[int], choices: list[tuple[Sampling, Callable[[Token], None]]]
    ) -> list[Sequence]:
        """Queue one sequence per (sampling, emit) for the same prompt: all of them, or
        none (EngineFull) when they do not all fit the free slots and the queue."""
        if not prompt:
            raise ValueError("The prompt is empty.")
        longest = max(sampling.max_tokens for sampling, _ in choices)
        if len(prompt) + longest > self.context_length:
            raise ValueError(
                f"The prompt's {len(prompt)} tokens and max_tokens {longest} "
                f"exceed the model's {self.context_length}-token context."
            )
        now = time.perf_counter()
        sequences = [
            Sequence(prompt, sampling, emit, np.random.default_rng(sampling.seed), queued_at=now)
            for sampling, emit in choices
        ]
        with self.lock:
            free = self.slots.count(None)
            if len(self.queue) + len(sequences) > self.max_queue + free:
                raise EngineFull(
                    f"all {len(self.slots)} slots are taken and {len(self.queue)} sequences "
                    "wait for one; retry later."
                )
            self.queue.extend(sequences)
            self.lock.notify()
        return sequences

    def cancel(self, sequence: Sequence, abandoned: bool = True) -> None:
        """Stop a sequence: its slot is freed before the next step. ``abandoned``: its
        client left (counted in ``usage()["cancelled"]``); False: it is complete (a stop
        string was reached)."""
        with self.lock:
            if sequence.cancelled:
                return  # finished, or cancelled before
            sequence.cancelled = True
            sequence.abandoned = abandoned
            if sequence in self.queue:
                self.queue.remove(sequence)
                self.stats["cancelled"] += abandoned
            self.lock.notify()

    def usage(self) -> dict[str, int]:
        """Running and queued sequences, those cancelled mid-way so far, and the tokens
        the running ones' cache rows hold."""
        with self.lock:
            active = [s for s in self.slots if s is not None]
            return {
                "cancelled": self.stats["cancelled"],
                "running": len(active),
                "queued": len(self.queue),
                "kv_tokens": sum(s.length for s in active),
                "kv_capacity": len(self.slots) * self.context_length,
            }

    def close(self) -> None:
        with self.lock:
            self.running = False
            self.lock.notify()
        self.thread.join(timeout=5)

    # -- the engine thread -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                while self.running and not self.queue and not any(self.slots):
                    self.lock.wait()
                if not self.running:
                    return
                self._admit()
                work = [s for s in self.slots if s is not None]
            try:
                self._step(work)
            except Exception as exc:  # a failed step ends its sequences, not the engine
                for sequence in work:
                    self._finish(sequence, Token(-1, finish=f"error: {exc}"))

    def _admit(self) -> None:
        for sequence in [s for s in self.slots if s is not None and s.cancelled]:
            self.slots[sequence.slot] = None  # cut short: its client left, or a stop string
            self.stats["cancelled"] += sequence.abandoned
        while self.queue and None in self.slots:
            sequence = self.queue.popleft()
            sequence.slot = self.slots.index(None)
            self.slots[sequence.slot] = sequence

    def _step(self, work: list[Sequence]) -> None:
        """Prompt chunks of the sequences still prefilling, oldest first, up to
        ``chunk_tokens`` in all (a bounded stall for the others; ``idle_chunk_tokens``
        while none decodes), then one decode step of every sequence that has its first
        token."""
        waiting = any(not s.prefilling and s.next_token >= 0 and not s.cancelled for s in work)
        # prompt tokens this step, first come first served
        budget = self.chunk_tokens if waiting else self.idle_chunk_tokens
        for sequence in sorted(
            (s for s in work if s.prefilling and not s.cancelled), key=lambda s: s.queued_at
        ):
            if budget <= 0:
                break
            start = sequence.length
            chunk = sequence.prompt[start : start + budget]
            budget -= len(chunk)
            if self.prefill is not None:
                logits = self._run_openvino(sequence.slot, start, chunk)
            else:
                logits = self._run(
                    slice(sequence.slot, sequence.slot + 1), [chunk], [start + len(chunk)]
                )
            sequence.length += len(chunk)
            if not sequence.prefilling:
                sequence.first_token_at = time.perf_counter()
                self._emit(sequence, logits[0])
        decoding = [s for s in work if not s.prefilling and s.next_token >= 0 and not s.cancelled]
        if not decoding:
            return
        draft = self._draft(decoding[0]) if len(decoding) == 1 else []
        if draft:  # one row: ONNX Runtime's GroupQueryAttention verifies drafts at batch 1
            s = decoding[0]
            logits = self._run(
                slice(s.slot, s.slot + 1),
                [[s.next_token, *draft]],
                [s.length + 1 + len(draft)],
                every_position=True,
            )[0]
            self.stats["drafted"] += len(draft)
            for position in range(len(draft) + 1):
                s.length += 1  # the token fed at this position is now in the cache
                self._emit(s, logits[position])
                if s.cancelled or position == len(draft) or s.next_token != draft[position]:
                    break
                self.stats["accepted"] += 1
            self.stats["steps"] += 1
            return
        rows = max(s.slot for s in decoding) + 1
        tokens, lengths = [[0] for _ in range(rows)], [1] * rows
        for s in work:
            if s.slot < rows and not s.cancelled:
                lengths[s.slot] = s.length + 1  # a prefilling row writes where its next chunk goes
        for s in decoding:
            tokens[s.slot] = [s.next_token]
        logits = self._run(slice(0, rows), tokens, lengths)
        for s in decoding:
            s.length += 1
            self._emit(s, logits[s.slot])
        self.stats["steps"] += 1

    def _draft(self, sequence: Sequence) -> list[int]:
        """The tokens prompt lookup proposes after ``sequence``'s next token (none for a
        sampled sequence, or without room in its slot or its max_tokens)."""
        room = min(
            self.lookup_tokens,
            self.context_length - sequence.length - 2,
            sequence.sampling.max_tokens - sequence.generated - 1,
        )
        if room <= 0 or sequence.sampling.temperature > 0:
            return []
        return prompt_lookup([*sequence.prompt, *sequence.tokens], room)

    def _run(
        self,
        rows: slice,
        tokens: list[list[int]],
        lengths: list[int],
        every_position: bool = False,
    ) -> np.ndarray:
        """The model on cache rows ``rows``: each row's new ``tokens`` (equal counts) ending
        at its total ``lengths``; returns each row's last-position logits (every
        position's with ``every_position``)."""
        ort = self.ort
        width = max(lengths)
        mask = np.zeros((len(lengths), width), np.int64)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray(tokens, np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        for (past, present), buffer in zip(self.names, self.cache, strict=True):
            view = ort.OrtValue.ortvalue_from_numpy(buffer[rows])
            binding.bind_ortvalue_input(past, view)
            binding.bind_ortvalue_output(present, view)
        binding.bind_output("logits")
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[-1].numpy()
        return np.asarray(logits if every_position else logits[:, -1, :], np.float32)

    def _run_openvino(self, slot: int, start: int, chunk: list[int]) -> np.ndarray:
        """A prompt chunk of the sequence in ``slot`` on OpenVINO, after its ``start``
        cached tokens; the new keys and values go into the cache rows ONNX Runtime reads."""
        assert self.prefill is not None
        past = [buffer[slot : slot + 1, :, :start] for buffer in self.cache]
        logits, presents = self.prefill.run(chunk, past if start else None)
        end = start + len(chunk)
        for buffer, present in zip(self.cache, presents, strict=True):
            buffer[slot, :, start:end] = present[0, :, start:end]
        return logits[-1:]

    def _emit(self, sequence: Sequence, logits: np.ndarray) -> None:
        token = choose(logits, sequence.sampling, sequence.rng)
        sequence.generated += 1
        sequence.tokens.append(token.token)
        self.stats["generated"] += 1
        if token.token in self.eos:
            token.finish = "stop"
        elif (
            sequence.generated >= sequence.sampling.max_tokens
            or sequence.length + 1 >= self.context_length
        ):
            token.finish = "length"
        sequence.next_token = token.token
        if token.finish:
            self._finish(sequence, token)
        else:
            sequence.emit(token)

    def _finish(self, sequence: Sequence, token: Token) -> None:
        with self.lock:
            if sequence.slot >= 0 and self.slots[sequence.slot] is sequence:
                self.slots[sequence.slot] = None
            sequence.cancelled = True
        sequence.emit(token)


@dataclass
class LlmServed:
    """A decoder LM artifact being served: its engine and its tokenizer (chat template)."""

    name: str
    engine: LlmEngine
    tokenizer: Any
    max_tokens: int = 1024  # per request, the most new tokens a client may ask for
    metrics: Any = None
