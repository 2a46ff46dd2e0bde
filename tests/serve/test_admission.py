"""Admission by time: the model's run time is learned from its runs, and a request that
would find more measured work ahead of it than the bound is refused at once, while an
idle model never refuses."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto, helper

import slimserve as ss
from slimserve.serve.admission import RunCost
from slimserve.serve.batching import Batcher, BatchLimits, QueueFull
from slimserve.serve.metrics import Metrics
from slimserve.serve.repository import _served


def test_the_fitted_line_recovers_the_run_times() -> None:
    cost = RunCost()
    for rows in [1, 2, 4, 8, 16, 32] * 3:
        cost.observe(rows, 0.002 + 0.0005 * rows)  # 2 ms fixed, 0.5 ms a row
    fixed, per_row = cost.line()
    assert fixed == pytest.approx(0.002, rel=1e-6) and per_row == pytest.approx(0.0005, rel=1e-6)
    assert cost.learned
    # 70 rows in batches of 32: two full runs and one of 6 rows
    assert cost.queue_seconds(70, 32) == pytest.approx(2 * 0.018 + 0.005)


def test_runs_of_one_size_give_a_per_row_time() -> None:
    cost = RunCost()
    for _ in range(10):
        cost.observe(4, 0.004)
    assert cost.run_seconds(8) == pytest.approx(0.008)
    assert not RunCost().learned and RunCost().run_seconds(5) == 0.0


def _identity() -> ss.OnnxModel:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    return ss.OnnxModel(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_request_behind_too_much_work_is_refused_and_an_idle_model_never_refuses() -> None:
    served = _served("m", "1", _identity(), threads=1, spinning=False)
    limits = BatchLimits(max_batch_size=4, max_delay_ms=1, max_queue=1000, max_queue_ms=50.0)
    batcher = Batcher(served, limits, ThreadPoolExecutor(max_workers=1), Metrics.create())
    for _ in range(10):  # every run "takes" 20 ms a row: what the bound prices
        batcher.cost.observe(1, 0.020)
    release = threading.Event()

    async def main() -> tuple[list[object], object]:
        x = np.ones((1, 4), np.float32)
        idle = await batcher.infer({"x": x})  # nothing ahead: admitted, whatever it costs
        batcher.executor.submit(release.wait, 30)  # the model thread is busy elsewhere
        tasks = [asyncio.ensure_future(batcher.infer({"x": x})) for _ in range(6)]
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True)), idle

    answers, idle = asyncio.run(main())
    assert isinstance(idle, dict)
    refused = [a for a in answers if isinstance(a, QueueFull)]
    served_ok = [a for a in answers if isinstance(a, dict)]
    # 20 ms a row, a 50 ms bound: two queued rows are admitted (40 ms), the third would
    # find 60 ms ahead of it
    assert len(served_ok) == 2 and len(refused) == 4
    assert "ms of work ahead of this request, over its 50 ms bound" in str(refused[0])


@pytest.mark.parametrize("off", [0.0, None])
def test_no_time_bound_when_turned_off(off: float | None) -> None:
    served = _served("m", "1", _identity(), threads=1, spinning=False)
    limits = BatchLimits(max_batch_size=4, max_delay_ms=1, max_queue=1000, max_queue_ms=off)
    batcher = Batcher(served, limits, ThreadPoolExecutor(max_workers=1), Metrics.create())
    for _ in range(10):
        batcher.cost.observe(1, 10.0)
    batcher.pending_rows = 100
    assert not batcher.full()


def test_text_waiting_for_the_tokenizer_counts_as_queued(text_artifact: object) -> None:
    # Under overload the tokenizer's backlog is the queue: a request waiting there must
    # count against --max-queue, or admission never sees it.
    import concurrent.futures
    import json

    import httpx

    from tests.serve.conftest import running

    with running(text_artifact, max_queue=1) as (server, url):  # type: ignore[arg-type]
        state = server.config.app.state.slimserve  # type: ignore[attr-defined]
        release = threading.Event()
        state.tokenizer_pool.submit(release.wait, 30)  # the tokenizer's thread is busy
        body = json.dumps(
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
        )
        infer = f"http://{url}/v2/models/tiny-text/infer"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, infer, content=body, timeout=30)
            batcher = state.batchers[("tiny-text", "1")]
            for _ in range(500):  # until the first request waits for the tokenizer
                if batcher.tokenizing:
                    break
                threading.Event().wait(0.01)
            second = httpx.post(infer, content=body, timeout=30)
            release.set()
            assert first.result().status_code == 200
        assert second.status_code == 503 and "queued, its limit" in second.json()["error"]
        assert batcher.tokenizing == 0 and batcher.tokenizing_rows == 0
