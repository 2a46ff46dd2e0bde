"""Shared by the measure tests: one small digits artifact (static int8)."""

from __future__ import annotations

from pathlib import Path

import pytest

import slimserve as ss


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    recipe = {
        "name": "digits-q",
        "model": {"example": "digits"},
        "data": {
            "calibration": {"example": "digits", "split": "train", "samples": 128},
            "eval": {"example": "digits", "split": "test"},
        },
        "steps": [{"quantize": {"mode": "static"}}],
        "bench": {"batch_sizes": [1, 16], "warmup": 2, "repeats": 5},
    }
    ss.run_recipe(ss.parse_recipe(recipe), out)
    return out / "digits-q"
