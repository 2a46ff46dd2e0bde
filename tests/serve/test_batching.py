"""The batcher: how it groups text requests by length (the demo and benchmarks batch the
same way), when a batch leaves, and whose rows go where."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import slimserve as ss
from slimserve.serve.batching import Batcher, BatchLimits
from slimserve.serve.merging import LENGTH_SPREAD, length_groups
from slimserve.serve.metrics import Metrics
from slimserve.serve.repository import _served


def test_sentences_pad_only_to_a_similar_length() -> None:
    lengths = [10, 12, 40, 9, 100, 14]
    assert length_groups(lengths) == [[3, 0, 1], [5], [2], [4]]
    assert length_groups([]) == []


@given(st.lists(st.integers(min_value=1, max_value=512), max_size=64))
def test_groups_partition_the_requests_within_the_spread(lengths: list[int]) -> None:
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        sizes = [lengths[i] for i in group]
        assert max(sizes) <= LENGTH_SPREAD * min(sizes)
    firsts = [lengths[g[0]] for g in groups]
    assert firsts == sorted(firsts)


# The batcher itself, on real ONNX Runtime sessions: when a batch leaves, what it holds,
# and that every request gets its own rows back.


def _summing_model() -> ss.OnnxModel:
    """y[n] = sum over the (dynamic) second axis of x[n]: rows of any width."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)
    graph = helper.make_graph([node], "sum", [x], [y], initializer=[axes])
    return ss.OnnxModel(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _batcher(
    model: ss.OnnxModel, max_batch_size: int, max_delay_ms: float
) -> tuple[Batcher, Metrics]:
    served = _served("m", "1", model, threads=1, spinning=False)
    metrics = Metrics.create()
    executor = ThreadPoolExecutor(max_workers=1)
    return Batcher(served, BatchLimits(max_batch_size, max_delay_ms), executor, metrics), metrics


def _runs_and_rows(metrics: Metrics) -> list[float]:
    """Model runs so far and their rows, from the batch-size histogram."""
    samples = {
        s.name: s.value
        for m in metrics.registry.collect()
        if m.name == "slimserve_batch_size"
        for s in m.samples
    }
    return [samples["slimserve_batch_size_count"], samples["slimserve_batch_size_sum"]]


def test_a_full_batch_leaves_at_once_and_rows_go_back_to_their_requests() -> None:
    batcher, metrics = _batcher(_summing_model(), max_batch_size=4, max_delay_ms=10_000)
    rows = [np.full((1, 3), float(i), np.float32) for i in range(4)]

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(batcher.infer({"x": r}) for r in rows))

    started = time.perf_counter()
    answers = asyncio.run(main())
    assert time.perf_counter() - started < 5  # not the 10 s delay: the batch was full
    assert [float(a["y"][0, 0]) for a in answers] == [0.0, 3.0, 6.0, 9.0]
    assert _runs_and_rows(metrics) == [1, 4]  # one run of 4 rows


def test_a_lone_request_does_not_wait_for_company() -> None:
    batcher, _ = _batcher(_summing_model(), max_batch_size=32, max_delay_ms=10_000)
    started = time.perf_counter()
    answer = asyncio.run(batcher.infer({"x": np.ones((2, 5), np.float32)}))
    assert time.perf_counter() - started < 5
    np.testing.assert_array_equal(answer["y"], [[5.0], [5.0]])


def test_widths_run_apart_and_an_oversized_request_runs_alone() -> None:
    batcher, metrics = _batcher(_summing_model(), max_batch_size=4, max_delay_ms=50)
    requests = [
        np.ones((1, 3), np.float32),
        np.ones((2, 7), np.float32),  # another width: its own group
        np.ones((9, 3), np.float32),  # over max_batch_size: a run of its own
        np.ones((1, 3), np.float32),
    ]

    async def main() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(batcher.infer({"x": r}) for r in requests))

    answers = asyncio.run(main())
    for request, answer in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(answer["y"], request.sum(1, keepdims=True))
    runs, total_rows = _runs_and_rows(metrics)
    assert total_rows == 13
    assert runs >= 3  # the 9 rows alone, width 7 apart from width 3


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 8), st.integers(1, 64)), min_size=1, max_size=40),
    st.integers(64, 2048),
)
def test_token_budget_groups_never_exceed_the_budget(
    items: list[tuple[int, int]], budget: int
) -> None:
    from slimserve.serve.merging import budget_groups

    rows, lengths = [r for r, _ in items], [n for _, n in items]
    groups = budget_groups(rows, lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(items)))  # each once
    for group in groups:
        padded = sum(rows[i] for i in group) * max(lengths[i] for i in group)
        assert padded <= budget or len(group) == 1  # only a lone item may be over


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=64), st.integers(16, 1024))
def test_openai_splits_texts_to_fit_the_budget(lengths: list[int], budget: int) -> None:
    from slimserve.serve.openai import fit_budget

    width = max(lengths)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    parts = fit_budget({"input_ids": mask * 3, "attention_mask": mask}, budget)
    assert sum(len(p["attention_mask"]) for p in parts) == len(lengths)  # in order, all
    np.testing.assert_array_equal(
        np.concatenate([p["attention_mask"].sum(1) for p in parts]), lengths
    )
    assert all(p["attention_mask"].size <= budget or len(p["attention_mask"]) == 1 for p in parts)


def test_a_padding_free_text_model_runs_sentences_of_any_length_together() -> None:
    """Length groups split a 4-token and a 40-token request into two runs; a model built
    with the unpad step (its linear layers skip padding) gets them in one run."""
    from slimserve.serve.repository import TextInput

    runs = {}
    requests = [np.ones((1, 4), np.float32), np.ones((1, 40), np.float32)]
    for padding_free in (False, True):
        served = _served("m", "1", _summing_model(), threads=1, spinning=False)
        served.text = TextInput(tokenizer=None, max_length=64, padding_free=padding_free)
        metrics = Metrics.create()
        batcher = Batcher(
            served, BatchLimits(8, 10_000), ThreadPoolExecutor(max_workers=1), metrics
        )

        async def main(batcher: Batcher = batcher) -> list[dict[str, np.ndarray]]:
            batcher.no_more_company = lambda: len(batcher.pending) == 2
            return await asyncio.gather(*(batcher.infer({"x": r}) for r in requests))

        answers = asyncio.run(main())
        assert [float(a["y"][0, 0]) for a in answers] == [4.0, 40.0]  # zero padding adds 0
        runs[padding_free] = _runs_and_rows(metrics)
    assert runs == {False: [2, 2], True: [1, 2]}
