"""Why an int4 decoder LM got worse: each layer alone in int4 groups, its KL against the
float model; on a tiny random Llama, measured rather than assumed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import slimserve as ss
from slimserve.measure.llm import reference_for
from slimserve.measure.llm_sensitivity import diagnosis, layer_sensitivity, rounded


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_groups_take_at_most_16_values_each(symmetric: bool) -> None:
    weight = torch.randn(8, 64)
    groups = rounded(weight, 32, symmetric).reshape(8, 2, 32)
    for row in groups.reshape(-1, 32):
        assert len(torch.unique(row)) <= 16
    error = (rounded(weight, 32, symmetric) - weight).abs().max()
    assert 0 < error < weight.abs().max() / 4  # rounded, not replaced


def test_every_layer_is_ranked_by_what_its_int4_costs(tiny_llama: Path) -> None:
    model = ss.load_model(tiny_llama)
    windows = [list(range(3, 67)), list(range(70, 134))]
    reference = reference_for(model, windows)  # type: ignore[arg-type]
    before = [p.detach().clone() for p in model.module.parameters()]  # type: ignore[union-attr]
    ranked = layer_sensitivity(model, reference, 16, symmetric=False)  # type: ignore[arg-type]
    assert [name for name, _ in sorted(ranked)] == ["layers.0", "layers.1"]
    assert ranked[0][1] >= ranked[1][1] > 0  # most costly first; rounding costs something
    after = list(model.module.parameters())  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # restored
    line = diagnosis(ranked)
    assert line.startswith("Why int4 got worse") and ranked[0][0] in line
