"""How queued requests merge into model runs: a text model's requests are grouped by
length (so short sentences are not padded to a long one's length) and by the token
budget, then zero-padded to the longest of their group."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Called once per request with (outputs, None) or (None, the model's exception).
Done = Callable[[dict[str, np.ndarray] | None, BaseException | None], None]


@dataclass
class Item:
    inputs: dict[str, np.ndarray]
    done: Done
    rows: int
    padded: bool = False  # a text model: sequences of any length merge, zero-padded
    deadline: float = float("inf")  # time.monotonic() after which it is not run

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


def budget_groups(rows: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Positions split into runs, in length order, each holding at most ``budget`` tokens
    once padded (its rows x its longest length); one item over the budget runs alone."""
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    total, longest = 0, 0
    for i in order:
        if groups and (total + rows[i]) * max(longest, lengths[i]) <= budget:
            groups[-1].append(i)
            total, longest = total + rows[i], max(longest, lengths[i])
        else:
            groups.append([i])
            total, longest = rows[i], lengths[i]
    return groups


def split_runs(
    items: list[Item], budget: int | None = None, spread: bool = True
) -> list[list[Item]]:
    """``items`` in the runs the model gets: split by length (``spread``) and by the
    token budget."""
    if spread:
        groups = [[items[i] for i in g] for g in length_groups([i.length for i in items])]
    else:
        groups = [items]
    if budget is None:
        return groups
    return [
        [group[i] for i in g]
        for group in groups
        for g in budget_groups([i.rows for i in group], [i.length for i in group], budget)
    ]


def pad_merge(group: list[Item]) -> dict[str, np.ndarray]:
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
