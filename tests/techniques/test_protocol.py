"""Every registered step is a frozen config that satisfies the Technique protocol."""

from __future__ import annotations

import pydantic
import pytest

from slimserve.recipe import STEPS, step_class, step_variants
from slimserve.techniques import Technique

MINIMAL = {  # the variants with a required choice
    ("prune", "torch"): {"sparsity": 0.5},
    ("prune", "depth"): {"granularity": "depth", "layers": 2},
    ("prune", "width"): {"granularity": "width", "mlp": 0.25},
}
CONFIGS = [
    (key, tag, cls)
    for key, config_type in STEPS.items()
    for tag, cls in step_variants(config_type).items()
]


@pytest.mark.parametrize(("key", "tag", "cls"), CONFIGS, ids=[f"{k}{t}" for k, t, _ in CONFIGS])
def test_each_step_is_a_frozen_technique(key: str, tag: str, cls: type) -> None:
    assert cls.model_config["extra"] == "forbid" and cls.model_config["frozen"]
    assert cls.name == key
    assert isinstance(cls.trains, bool)
    assert cls.produces in ("torch", "onnx", "llm", "causal_lm", "litert", "executorch")
    from slimserve.recipe import TAG_KEYS

    body = MINIMAL.get((key, tag), {TAG_KEYS[key]: tag} if tag else {})
    config = cls.model_validate(body)
    assert isinstance(config, Technique)
    assert config.describe().strip()
    first = next(iter(cls.model_fields))
    with pytest.raises(pydantic.ValidationError):
        setattr(config, first, getattr(config, first))  # config is data: never mutated
    assert step_class(key, config.model_dump()) is cls  # the recipe key picks it back
