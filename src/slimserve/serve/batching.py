"""Dynamic batching: concurrent requests merged into one ONNX Runtime run.

Requests wait at most ``max_delay_ms`` for company, up to ``max_batch_size`` rows, when
traffic is concurrent (a lone client is not made to wait for nobody);
requests whose non-batch shapes differ run in separate groups. ORT runs in a worker
thread, so the event loop keeps accepting (and collecting the next batch) meanwhile.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    future: asyncio.Future[dict[str, np.ndarray]]

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def signature(self) -> tuple[Any, ...]:
        return tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(self.inputs.items()))


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
        self.metrics = metrics
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1 and self.model.batched

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self.metrics.batch_size.labels(self.model.name).observe(_rows(inputs))
            return await loop.run_in_executor(self.executor, self._run, inputs)
        if self.task is None:
            self.task = asyncio.create_task(self._loop())
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        await self.queue.put(_Item(inputs, future))
        self.metrics.queue_depth.labels(self.model.name).set(self.queue.qsize())
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
                timeout = deadline - loop.time()
                if timeout <= 0 and self.queue.empty():
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(timeout, 0))
                except TimeoutError:
                    break
                if rows + item.rows > self.max_batch_size:
                    await self._dispatch(items)
                    items, rows = [item], item.rows
                    deadline = loop.time() + self.max_delay
                    continue
                items.append(item)
                rows += item.rows
            self.metrics.queue_depth.labels(self.model.name).set(self.queue.qsize())
            concurrent = len(items) > 1
            await self._dispatch(items)

    async def _dispatch(self, items: list[_Item]) -> None:
        groups: dict[tuple[Any, ...], list[_Item]] = {}
        for item in items:
            groups.setdefault(item.signature, []).append(item)
        loop = asyncio.get_running_loop()
        for group in groups.values():
            merged = {k: np.concatenate([i.inputs[k] for i in group]) for k in group[0].inputs}
            self.metrics.batch_size.labels(self.model.name).observe(_rows(merged))
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
