"""How the batcher groups text requests by length (the demo and benchmarks batch the same way)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from slimserve.serve.batching import LENGTH_SPREAD, length_groups


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
