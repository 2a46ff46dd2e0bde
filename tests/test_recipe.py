"""Recipes: errors that name the key path and the fix; resolved recipes re-run as is."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

import slimserve as ss
from slimserve.recipe import plan_steps

EXAMPLES = sorted(Path(str(files("slimserve.examples"))).glob("*.yaml"))
MINIMAL = {"name": "t", "model": {"example": "digits"}}


def write(tmp_path: Path, recipe: object) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe) if not isinstance(recipe, str) else recipe)
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_recipe_loads(path: Path) -> None:
    recipe = ss.load_recipe(path)
    assert recipe.steps or recipe.alternatives


def test_examples_exist() -> None:
    assert any(p.name == "digits.yaml" for p in EXAMPLES)


def test_unknown_top_level_key_suggests_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "stesp": []})
    with pytest.raises(ss.RecipeError, match=r"stesp: unknown key 'stesp'; did you mean 'steps'\?"):
        ss.load_recipe(path)


def test_misspelled_step_option_names_path_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "steps": [{"quantize": {"per_chanel": True}}]})
    with pytest.raises(ss.RecipeError) as info:
        ss.load_recipe(path)
    message = str(info.value)
    assert "steps[0].quantize.per_chanel: unknown key 'per_chanel'" in message
    assert "did you mean 'per_channel'?" in message
    # the default mode (dynamic) lists its own keys: calibration means nothing there
    assert "Valid: " in message and "activation_scales" in message
    assert "calibration" not in message.split("Valid: ")[1]


def test_nested_unknown_key_in_calibration(tmp_path: Path) -> None:
    steps = [{"quantize": {"mode": "static", "calibration": {"methd": "entropy"}}}]
    with pytest.raises(ss.RecipeError, match=r"steps\[0\]\.quantize\.calibration\.methd.*'method'"):
        ss.load_recipe(write(tmp_path, {**MINIMAL, "steps": steps}))


def test_unknown_data_key(tmp_path: Path) -> None:
    recipe = {**MINIMAL, "data": {"eval": {"example": "digits", "splitt": "test"}}}
    with pytest.raises(ss.RecipeError, match=r"data\.eval\.splitt: unknown key.*'split'"):
        ss.load_recipe(write(tmp_path, recipe))


def test_unknown_step_suggests_nearest(tmp_path: Path) -> None:
    with pytest.raises(
        ss.RecipeError, match=r"steps\[0\]: unknown step 'quantise'; did you mean 'quantize'"
    ):
        ss.load_recipe(write(tmp_path, {**MINIMAL, "steps": [{"quantise": {}}]}))


def test_wrong_types_say_what_was_expected(tmp_path: Path) -> None:
    recipe = {
        **MINIMAL,
        "steps": [{"quantize": {"per_channel": "sometimes", "mode": "int3"}}],
        "bench": {"threads": "two"},
    }
    with pytest.raises(ss.RecipeError) as info:
        ss.load_recipe(write(tmp_path, recipe))
    message = str(info.value)
    # an unknown mode leaves nothing to check the step's other keys against
    assert "2 problem(s)" in message
    assert (
        "steps[0].quantize.mode: Input should be "
        "'dynamic', 'static', 'weight_only', 'fp16', 'nncf' or 'llm' (got 'int3')" in message
    )
    assert "bench.threads: Input should be a valid integer" in message


def test_model_needs_exactly_one_source(tmp_path: Path) -> None:
    recipe = {"name": "t", "model": {"example": "digits", "path": "m.onnx"}}
    with pytest.raises(ss.RecipeError, match="model: give exactly one of example, path, python"):
        ss.load_recipe(write(tmp_path, recipe))


def test_missing_name(tmp_path: Path) -> None:
    with pytest.raises(ss.RecipeError, match="name: required key is missing"):
        ss.load_recipe(write(tmp_path, {"model": {"example": "digits"}}))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ss.RecipeError, match="line 2"):
        ss.load_recipe(write(tmp_path, "name: t\nmodel: example: digits\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ss.RecipeError, match="does not exist"):
        ss.load_recipe(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_recipe_folder(tmp_path: Path) -> None:
    recipe = ss.load_recipe(write(tmp_path, {"name": "t", "model": {"path": "m.onnx"}}))
    assert recipe.model.path == (tmp_path / "m.onnx").resolve()


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    recipe = ss.load_recipe(EXAMPLES[0])
    resolved = recipe.resolved()
    assert resolved["steps"][-1]["quantize"]["calibration"]["method"]
    again = ss.parse_recipe(yaml.safe_load(yaml.safe_dump(resolved)))
    assert again == recipe
    assert again.resolved() == resolved


def test_configs_are_frozen() -> None:
    config = ss.DynamicQuantizeConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.mode = "static"  # type: ignore[misc]


class TorchOnly(BaseModel):
    """A technique that needs a torch model (as pruning does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "prune"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "torch"
    trains: ClassVar[bool] = True

    def describe(self) -> str:
        return "torch only"


def test_plan_inserts_export_before_onnx_steps_and_at_the_end() -> None:
    planned = plan_steps((ss.DynamicQuantizeConfig(),), "torch")
    assert [s.name for s in planned] == ["export", "quantize"]
    planned = plan_steps((TorchOnly(),), "torch")
    assert [s.name for s in planned] == ["prune", "export"]


def test_plan_refuses_torch_step_after_quantize_and_says_why() -> None:
    with pytest.raises(ss.RecipeError) as info:
        plan_steps((ss.DynamicQuantizeConfig(), TorchOnly()), "torch")
    message = str(info.value)
    assert "steps[1] 'prune' needs a torch model" in message
    assert "step 'quantize' before it already made an ONNX model" in message
    assert "prune -> fine-tune -> quantize" in message


def test_plan_refuses_torch_step_on_onnx_source() -> None:
    with pytest.raises(ss.RecipeError, match="the source model is ONNX"):
        plan_steps((TorchOnly(),), "onnx")


def test_each_quantize_mode_has_only_its_own_keys(tmp_path: Path) -> None:
    recipe = {**MINIMAL, "steps": [{"quantize": {"mode": "static", "per_channel": "sometimes"}}]}
    with pytest.raises(ss.RecipeError, match="quantize.per_channel: Input should be a valid bool"):
        ss.load_recipe(write(tmp_path, recipe))
    recipe = {**MINIMAL, "steps": [{"quantize": {"mode": "weight_only", "activations": "int8"}}]}
    with pytest.raises(
        ss.RecipeError, match="'activations' applies to mode static or llm, not weight_"
    ):
        ss.load_recipe(write(tmp_path, recipe))
    steps = ss.load_recipe(write(tmp_path, {**MINIMAL, "steps": ["quantize"]})).steps
    assert isinstance(steps[0], ss.DynamicQuantizeConfig)  # no mode: dynamic
    assert not hasattr(steps[0], "calibration")


def test_a_resolved_recipe_of_the_one_config_era_still_loads(tmp_path: Path) -> None:
    # Manifests written before one config per mode spell out every mode's options.
    old_step = {
        "mode": "weight_only",
        "weights": "int8",
        "activations": "uint8",
        "activation_scales": "tensor",
        "per_channel": True,
        "reduce_range": False,
        "symmetric_activations": False,
        "op_types": None,
        "exclude": [],
        "preprocess": True,
        "calibration": {"method": "minmax", "percentile": 99.999, "samples": 256, "batch_size": 32},
        "fallback": "none",
        "bits": 4,
        "block_size": 64,
        "symmetric_weights": True,
        "accuracy_level": None,
        "keep_io_types": True,
    }
    (step,) = ss.parse_recipe({**MINIMAL, "steps": [{"quantize": old_step}]}).steps
    assert step == ss.WeightOnlyQuantizeConfig(block_size=64)
    changed = {**old_step, "per_channel": False}
    with pytest.raises(ss.RecipeError, match="'per_channel' applies to mode dynamic or static"):
        ss.parse_recipe({**MINIMAL, "steps": [{"quantize": changed}]})
