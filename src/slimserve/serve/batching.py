"""Dynamic batching: concurrent requests merged into one ONNX Runtime run.

Requests wait at most ``max_delay_ms`` for company, up to ``max_batch_size`` rows, when
traffic is concurrent (a lone client is not made to wait for nobody);
requests whose non-batch shapes differ run in separate groups, except for text models,
whose requests are grouped by length and zero-padded to the longest of their group.
ORT runs in a worker thread, so the event loop keeps accepting (and collecting the next
batch) meanwhile.

One bad request never fails the others: when a merged run fails, its requests run again
one by one and only the one that fails gets the error. The queue is bounded
(``max_queue``: the next request is refused at once, ``QueueFull``) and a request that
waited past ``timeout_s`` is answered ``DeadlineExceeded`` instead of being run late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from slimserve.serve.admission import RunCost
from slimserve.serve.merging import Done, Item, pad_merge, split_runs
from slimserve.serve.repository import ServedModel

log = logging.getLogger("slimserve.serve")


class QueueFull(Exception):
    """The model's queue is at its limit: answered 503 with Retry-After (gRPC UNAVAILABLE)."""


class DeadlineExceeded(Exception):
    """The request waited past its deadline before its batch ran: answered 504."""


@dataclass(frozen=True)
class BatchLimits:
    """How a batcher merges and bounds its queue (from ServeConfig)."""

    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256  # requests waiting or running; more are refused
    timeout_s: float | None = None  # longest wait in the queue before the model runs
    # Text models: the most tokens (rows x padded length) one model run may hold, as
    # text-embeddings-inference's --max-batch-tokens; None: rows alone bound a batch.
    max_batch_tokens: int | None = None
    # The work a request may find ahead of it, in ms of measured model time (admission.py):
    # None or 0: no time bound, the count limit alone.
    max_queue_ms: float | None = None


class Batcher:
    """Queues one model's requests and runs them merged."""

    def __init__(
        self,
        model: ServedModel,
        limits: BatchLimits,
        executor: ThreadPoolExecutor,
        metrics: Any,
    ) -> None:
        self.model = model
        self.max_batch_size = limits.max_batch_size
        self.max_delay = limits.max_delay_ms / 1000
        self.max_queue = limits.max_queue
        self.timeout = limits.timeout_s
        self.max_batch_tokens = limits.max_batch_tokens
        self.executor = executor
        self.enabled = limits.max_batch_size > 1 and model.batched
        self.in_flight = 0  # requests queued or running (what max_queue bounds)
        # Text requests admitted and waiting for the tokenizer's thread, and their rows:
        # they count as queued, or a backlog there would be invisible to admission.
        self.tokenizing = 0
        self.tokenizing_rows = 0
        self.max_queue_ms = limits.max_queue_ms
        self.cost = RunCost()  # the model's run time in rows, learned from its runs
        self.run_started: float | None = None  # perf_counter() of the run in progress
        self.run_rows = 0
        # Labelled children looked up once (labels() takes a lock): refusals must be cheap.
        self.refused_full = metrics.rejected.labels(model.name, "queue_full")
        self.refused_late = metrics.rejected.labels(model.name, "deadline")
        self.padded = model.text is not None
        # A padding-free encoder loses little to padding and a lot to one more run (each
        # run is a round of the model's fixed cost, and later groups wait for earlier ones).
        self.split_lengths = not getattr(model.text, "padding_free", False)
        # check_inputs fixes every axis the model fixes: when only the batch axis (and a
        # text model's sequence axis) may vary, all requests merge without comparing shapes.
        skip = 2 if self.padded else 1
        self.uniform = all(None not in dims[skip:] for _, dims in model.input_checks.values())
        # Labelled children looked up once: labels() takes a lock on every call.
        self.batch_size = metrics.batch_size.labels(model.name)
        # Read when /metrics is scraped, not set on every request.
        metrics.queue_depth.labels(model.name).set_function(lambda: len(self.pending))
        # Waiting requests, and what the loop waits on. A request wakes the loop only
        # when it is the first (the loop is idle) or fills the batch; the delay is one
        # timer per batch. (asyncio.Queue with wait_for cost a task per request.)
        self.pending: deque[Item] = deque()
        self.pending_rows = 0
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        # The server's loop, looked up once: get_running_loop() makes a getpid() system
        # call on every call, ~5 % of the event loop's time at batch 1 here.
        self.loop: asyncio.AbstractEventLoop | None = None
        # True when no client can send a request now (the server's connections all wait
        # for answers): then a batch leaves without waiting out max_delay_ms.
        self.no_more_company: Callable[[], bool] = lambda: False

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for ``inputs``, run merged with concurrent requests."""
        loop = self.loop or asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()

        def done(outputs: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
            if not future.done():  # else its request was cancelled meanwhile
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(outputs)  # type: ignore[arg-type]

        self.submit(inputs, done)
        return await future

    def submit(self, inputs: dict[str, np.ndarray], done: Done) -> None:
        """Queue ``inputs``; ``done`` is called on the event loop when the model has run.
        No task or future per request: the HTTP fast path answers from ``done``."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        rows = _rows(inputs)
        if self.full(rows):
            _call(done, None, self.refusal(rows))
            return
        budget = self.max_batch_tokens
        if budget is not None and self.padded:
            tokens = _rows(inputs) * int(next(iter(inputs.values())).shape[1])
            if tokens > budget:
                from slimserve.serve.v2codec import TooLarge

                _call(
                    done,
                    None,
                    TooLarge(
                        f"The request holds {tokens} tokens once padded, over the "
                        f"{budget}-token batch budget (--max-batch-tokens): send fewer or "
                        "shorter texts per request."
                    ),
                )
                return
        self.in_flight += 1
        done = self._counted(done)
        if not self.enabled:
            self.batch_size.observe(rows)
            run = loop.run_in_executor(self.executor, self._run, inputs)
            run.add_done_callback(lambda f: _call(done, *_outcome(f)))
            return
        if self.task is None:
            self.task = loop.create_task(self._loop(loop))
        deadline = time.monotonic() + self.timeout if self.timeout is not None else float("inf")
        self.pending.append(Item(inputs, done, rows, self.padded, deadline))
        self.pending_rows += rows
        if (
            len(self.pending) == 1
            or self.pending_rows >= self.max_batch_size
            or self.no_more_company()
        ):
            self._wake()  # the idle loop's first request, a full batch, or no one left

    def full(self, rows: int = 1) -> bool:
        """True when a new request of ``rows`` rows would be over ``max_queue``, or would
        wait past the time bound behind the work already queued and running."""
        waiting = self.in_flight + self.tokenizing
        return waiting >= self.max_queue or self.seconds_ahead(rows) > self.bound()

    def bound(self) -> float:
        """The time bound in seconds (infinite while off or not yet learned)."""
        if not self.max_queue_ms or not self.cost.learned:
            return float("inf")
        return self.max_queue_ms / 1000

    def seconds_ahead(self, rows: int) -> float:
        """The model time until a new request of ``rows`` rows would be answered: what is
        left of the run in progress and the queue with it, merged into batches. Zero
        when nothing is ahead of it (an idle server never refuses)."""
        started = self.run_started
        queued = (self.pending_rows if self.enabled else self.in_flight) + self.tokenizing_rows
        if started is None and not queued:
            return 0.0
        left = 0.0
        if started is not None:
            elapsed = time.perf_counter() - started
            left = max(0.0, self.cost.run_seconds(self.run_rows) - elapsed)
        batch = self.max_batch_size if self.enabled else 1
        return left + self.cost.queue_seconds(queued + rows, batch)

    def refusal(self, rows: int = 1) -> QueueFull:
        """The error a request refused for a full queue gets (and count it)."""
        self.refused_full.inc()
        if self.in_flight + self.tokenizing >= self.max_queue:
            return QueueFull(
                f"Model '{self.model.name}' has {self.in_flight + self.tokenizing} requests "
                "queued, its limit "
                f"(--max-queue {self.max_queue}); retry shortly."
            )
        return QueueFull(
            f"Model '{self.model.name}' has {self.seconds_ahead(rows) * 1000:.0f} ms of work "
            f"ahead of this request, over its {self.bound() * 1000:.0f} ms bound "
            "(--max-queue-ms); retry shortly."
        )

    def _counted(self, done: Done) -> Done:
        def answered(outputs: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
            self.in_flight -= 1
            done(outputs, error)

        return answered

    def _expire(self, items: list[Item]) -> list[Item]:
        """The items still inside their deadline; the others are answered now."""
        if self.timeout is None:
            return items
        now = time.monotonic()
        live = []
        for item in items:
            if item.deadline >= now:
                live.append(item)
                continue
            self.refused_late.inc()
            _call(
                item.done,
                None,
                DeadlineExceeded(
                    f"The request waited over {self.timeout:g} s (--request-timeout) in "
                    f"model '{self.model.name}'s queue; the server is overloaded."
                ),
            )
        return live

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _wait(self, loop: asyncio.AbstractEventLoop, delay: float | None) -> None:
        """Until a request wakes the loop, or ``delay`` seconds (None: no limit)."""
        self.waiter = loop.create_future()
        timer = loop.call_later(delay, self._wake) if delay is not None else None
        try:
            await self.waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(inputs)
        self.run_rows, started = rows, time.perf_counter()
        self.run_started = started
        try:
            outputs = self.model.predictor.predict(inputs)
        finally:
            self.run_started = None
        self.cost.observe(rows, time.perf_counter() - started)
        return dict(zip(self.model.predictor.output_names, outputs, strict=True))

    async def _loop(self, loop: asyncio.AbstractEventLoop) -> None:
        concurrent = False  # did the last batch find company? (then waiting pays)
        while True:
            if not self.pending:
                await self._wait(loop, None)
            # A lone client gains nothing from waiting: only wait for company when the
            # previous batch had some; requests that queued meanwhile are taken at once.
            if (
                (concurrent or len(self.pending) > 1)
                and self.pending_rows < self.max_batch_size
                and not self.no_more_company()
            ):
                await self._wait(loop, self.max_delay)
            items = [self.pending.popleft()]
            rows = items[0].rows
            while self.pending and rows + self.pending[0].rows <= self.max_batch_size:
                item = self.pending.popleft()
                items.append(item)
                rows += item.rows
            self.pending_rows -= rows
            concurrent = len(items) > 1
            items = self._expire(items)
            if items:
                await self._dispatch(loop, items)

    async def _dispatch(self, loop: asyncio.AbstractEventLoop, items: list[Item]) -> None:
        by_signature: dict[tuple[Any, ...], list[Item]] = {}
        if self.uniform:
            by_signature[()] = items
        else:
            for item in items:
                by_signature.setdefault(item.signature, []).append(item)
        groups = [
            group
            for same in by_signature.values()
            for group in (
                split_runs(same, self.max_batch_tokens, self.split_lengths)
                if same[0].padded
                else [same]
            )
        ]
        for group in groups:
            if group[0].padded:
                merged = pad_merge(group)
            else:
                merged = {k: np.concatenate([i.inputs[k] for i in group]) for k in group[0].inputs}
            self.batch_size.observe(_rows(merged))
            try:
                outputs = await loop.run_in_executor(self.executor, self._run, merged)
            except Exception as exc:
                if len(group) == 1:
                    _call(group[0].done, None, exc)
                    continue
                # One request may have poisoned the merged run: run each alone, so only
                # the one that fails gets the error (a bug in the model fails them all).
                for item in group:
                    try:
                        alone = await loop.run_in_executor(self.executor, self._run, item.inputs)
                    except Exception as item_error:
                        _call(item.done, None, item_error)
                    else:
                        _call(item.done, alone, None)
                continue
            start = 0
            for item in group:
                stop = start + item.rows
                _call(item.done, {k: v[start:stop] for k, v in outputs.items()}, None)
                start = stop


def _outcome(
    run: asyncio.Future[dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray] | None, BaseException | None]:
    if run.cancelled():
        return None, asyncio.CancelledError()
    error = run.exception()
    return (None, error) if error is not None else (run.result(), None)


def _call(done: Done, outputs: dict[str, np.ndarray] | None, error: BaseException | None) -> None:
    # One request's answer failing (a bug) must not stop the others' or the batch loop.
    try:
        done(outputs, error)
    except Exception:
        log.exception("answering a request failed")


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0
