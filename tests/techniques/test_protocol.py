"""Every registered step is a frozen config that satisfies the Technique protocol."""

from __future__ import annotations

import pydantic
import pytest

from slimserve.recipe import STEPS, step_variants
from slimserve.techniques import Technique

MINIMAL = {"prune": {"sparsity": 0.5}}  # the one step with a required choice
CONFIGS = [
    (key, tag, cls)
    for key, config_type in STEPS.items()
    for tag, cls in step_variants(config_type).items()
]


@pytest.mark.parametrize(("key", "tag", "cls"), CONFIGS, ids=[f"{k}{t}" for k, t, _ in CONFIGS])
def test_each_step_is_a_frozen_technique(key: str, tag: str, cls: type) -> None:
    assert cls.model_config["extra"] == "forbid" and cls.model_config["frozen"]
    assert cls.name == key
    assert isinstance(cls.trains, bool) and cls.produces in ("torch", "onnx", "llm")
    config = cls.model_validate(MINIMAL.get(key, {}))
    assert isinstance(config, Technique)
    assert config.describe().strip()
    first = next(iter(cls.model_fields))
    with pytest.raises(pydantic.ValidationError):
        setattr(config, first, getattr(config, first))  # config is data: never mutated
    if tag:
        assert config.mode == tag  # type: ignore[attr-defined]
