"""Dynamic batching: concurrent requests merged into one ONNX Runtime run.

Requests wait at most ``max_delay_ms`` for company, up to ``max_batch_size`` rows, when
traffic is concurrent (a lone client is not made to wait for nobody);
requests whose non-batch shapes differ run in separate groups, except for text models,
whose requests are grouped by length and zero-padded to the longest of their group.
ORT runs in a worker thread, so the event loop keeps accepting (and collecting the next
batch) meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    future: asyncio.Future[dict[str, np.ndarray]]
    padded: bool = False  # a text model: sequences of any length merge, zero-padded

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def length(self) -> int:
        return int(next(iter(self.inputs.values())).shape[1]) if self.padded else 0

    @property
    def signature(self) -> tuple[Any, ...]:
        skip = 2 if self.padded else 1
        return tuple((k, v.dtype.str, v.shape[skip:]) for k, v in sorted(self.inputs.items()))


# Text batches: a run of requests is split where the next one is this much longer than
# the shortest in the run, so short sentences are not padded to a long one's length.
LENGTH_SPREAD = 1.5


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Positions of ``lengths`` in the groups the batcher runs them in: sorted by length,
    split where one is more than ``LENGTH_SPREAD`` times its group's shortest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = [[order[0]]] if order else []
    for i in order[1:]:
        if lengths[i] > LENGTH_SPREAD * max(lengths[groups[-1][0]], 1):
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _length_groups(items: list[_Item]) -> list[list[_Item]]:
    return [[items[i] for i in g] for g in length_groups([i.length for i in items])]


def _pad_merge(group: list[_Item]) -> dict[str, np.ndarray]:
    """Concatenate along the batch, padding the sequence axis with zeros (pad token,
    attention mask 0): exact for encoders that honour the attention mask."""
    longest = max(i.length for i in group)
    merged = {}
    for key in group[0].inputs:
        parts = [
            np.pad(i.inputs[key], ((0, 0), (0, longest - i.length)))
            if i.length < longest
            else i.inputs[key]
            for i in group
        ]
        merged[key] = np.concatenate(parts)
    return merged


class Batcher:
    """Queues one model's requests and runs them merged."""

    def __init__(
        self,
        model: Any,
        max_batch_size: int,
        max_delay_ms: float,
        executor: ThreadPoolExecutor,
        metrics: Any,
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.executor = executor
        # Labelled children looked up once: labels() takes a lock on every call.
        self.batch_size = metrics.batch_size.labels(model.name)
        self.queue_depth = metrics.queue_depth.labels(model.name)
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1 and self.model.batched

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self.batch_size.observe(_rows(inputs))
            return await loop.run_in_executor(self.executor, self._run, inputs)
        if self.task is None:
            self.task = asyncio.create_task(self._loop())
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        await self.queue.put(_Item(inputs, future, self.model.text is not None))
        self.queue_depth.set(self.queue.qsize())
        return await future

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.model.predictor.predict(inputs)
        return dict(zip(self.model.predictor.output_names, outputs, strict=True))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        concurrent = False  # did the last batch find company? (then waiting pays)
        while True:
            first = await self.queue.get()
            items, rows = [first], first.rows
            # A lone client gains nothing from waiting: only wait for company when the
            # previous batch had some; requests that queued meanwhile are taken at once.
            wait = self.max_delay if concurrent or not self.queue.empty() else 0.0
            deadline = loop.time() + wait
            while rows < self.max_batch_size:
                if self.queue.empty():
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except TimeoutError:
                        break
                else:  # queued already: no wait_for (it makes a task per call)
                    item = self.queue.get_nowait()
                if rows + item.rows > self.max_batch_size:
                    await self._dispatch(items)
                    items, rows = [item], item.rows
                    deadline = loop.time() + self.max_delay
                    continue
                items.append(item)
                rows += item.rows
            self.queue_depth.set(self.queue.qsize())
            concurrent = len(items) > 1
            await self._dispatch(items)

    async def _dispatch(self, items: list[_Item]) -> None:
        by_signature: dict[tuple[Any, ...], list[_Item]] = {}
        for item in items:
            by_signature.setdefault(item.signature, []).append(item)
        groups = [
            group
            for same in by_signature.values()
            for group in (_length_groups(same) if same[0].padded else [same])
        ]
        loop = asyncio.get_running_loop()
        for group in groups:
            if group[0].padded:
                merged = _pad_merge(group)
            else:
                merged = {k: np.concatenate([i.inputs[k] for i in group]) for k in group[0].inputs}
            self.batch_size.observe(_rows(merged))
            try:
                outputs = await loop.run_in_executor(self.executor, self._run, merged)
            except Exception as exc:  # every waiting request gets the error, none hangs
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in group:
                stop = start + item.rows
                if not item.future.done():
                    item.future.set_result({k: v[start:stop] for k, v in outputs.items()})
                start = stop


def _rows(inputs: dict[str, np.ndarray]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0
