"""The prune step: one-shot and gradual, masks and channels, distillation, diagnosis."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.measure.evaluate import evaluate
from slimserve.techniques.prune.structured import count_parameters


def context(train, test, reference, **kwargs):  # type: ignore[no-untyped-def]
    return ss.Context(
        data={"train": train, "eval": test}, reference=reference, log=StepLog(), **kwargs
    )


def prune(config: dict, digits_torch, train, test, **kwargs):  # type: ignore[no-untyped-def,type-arg]
    ctx = context(train, test, digits_torch, **kwargs)
    model = ss.PruneConfig.model_validate(config).apply(copy.deepcopy(digits_torch), ctx)
    return model, ctx.log


def accuracy(model, test) -> float:  # type: ignore[no-untyped-def]
    return evaluate(ss.load_predictor(model), test)["accuracy"]


def test_one_shot_unstructured(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    model, log = prune({"sparsity": 0.5}, digits_torch, digits_train, digits_test)
    assert log.details["sparsity"] == pytest.approx(0.5, abs=0.001)
    assert not [n for n, _ in model.module.named_buffers()]  # masks baked in
    assert (model.module.fc_out.weight != 0).all()  # the classifier stays dense


def test_gradual_global_with_distillation_keeps_accuracy(
    digits_torch, digits_train, digits_test
) -> None:  # type: ignore[no-untyped-def]
    config = {
        "scope": "global",
        "schedule": {"polynomial_decay": {"final_sparsity": 0.8, "end_step": 100, "frequency": 10}},
        "finetune": {"epochs": 6, "distill": 0.5},
    }
    model, log = prune(config, digits_torch, digits_train, digits_test)
    assert log.details["sparsity"] == pytest.approx(0.8, abs=0.001)
    assert accuracy(model, digits_test) >= accuracy(digits_torch, digits_test) - 0.02
    assert [p["step"] for p in log.details["history"]][:3] == [0.0, 10.0, 20.0]
    assert not log.notes  # a gentle ramp: no warning


def test_distillation_without_labels(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    unlabeled = ss.Dataset(digits_train.inputs)
    config = {
        "schedule": {"polynomial_decay": {"final_sparsity": 0.6, "end_step": 60, "frequency": 10}},
        "finetune": {"epochs": 4},
    }
    model, _ = prune(config, digits_torch, unlabeled, ss.Dataset(digits_test.inputs))
    assert accuracy(model, digits_test) >= 0.95


def test_steep_ramp_is_diagnosed(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    config = {
        "scope": "global",
        "schedule": {"polynomial_decay": {"final_sparsity": 0.98, "end_step": 4, "frequency": 2}},
        "finetune": {"epochs": 1},
    }
    _, log = prune(config, digits_torch, digits_train, digits_test)
    ramp = next(n for n in log.notes if "ramp too steep" in n)
    assert "at step 4" in ramp and "-> 98%" in ramp
    assert "Layers that lost most: fc1" in ramp
    assert "a later end_step (now 4)" in ramp and "exclude:" in ramp
    assert any("goal allows" in n for n in log.notes)


def test_one_shot_pruning_that_hurts_suggests_a_gradual_schedule_that_fits(
    digits_torch, digits_train, digits_test
) -> None:  # type: ignore[no-untyped-def]
    _, log = prune({"sparsity": 0.97, "scope": "global"}, digits_torch, digits_train, digits_test)
    note = next(n for n in log.notes if "goal allows" in n)
    steps = -(-len(digits_train) // 64) * 3
    assert "pruned in one shot without fine-tuning" in note
    assert f"final_sparsity: 0.97, end_step: {2 * steps // 3}" in note
    assert f"{len(digits_train)} train samples" in note and "finetune: {epochs: 3}" in note
    # the advice is a valid step: pasted into a recipe, it parses and fits the training
    import re

    body = re.search(r"prune: (\{schedule: .*\}\})\. With", note)
    assert body is not None
    import yaml

    config = ss.PruneConfig.model_validate(yaml.safe_load(body.group(1)))
    assert config.finetune is not None and config.schedule is not None


def test_schedule_longer_than_training_is_an_error(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    config = {
        "schedule": {"polynomial_decay": {"final_sparsity": 0.5, "end_step": 5000}},
        "finetune": {"epochs": 1},
    }
    with pytest.raises(
        ss.RecipeError, match="ends at step 5000 but fine-tuning runs only 22 steps"
    ):
        prune(config, digits_torch, digits_train, digits_test)


def test_finetune_without_train_data(digits_torch, digits_test) -> None:  # type: ignore[no-untyped-def]
    config = ss.PruneConfig.model_validate(
        {"schedule": {"constant_sparsity": {"target_sparsity": 0.5}}, "finetune": {}}
    )
    ctx = ss.Context(data={"eval": digits_test}, reference=digits_torch)
    with pytest.raises(ss.DataError, match="needs data.train"):
        config.apply(copy.deepcopy(digits_torch), ctx)


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_channel_pruning_shrinks_and_stays_exportable(
    importance: str, digits_torch, digits_train, digits_test
) -> None:  # type: ignore[no-untyped-def]
    model, log = prune(
        {"granularity": "channel", "sparsity": 0.5, "importance": importance},
        digits_torch,
        digits_train,
        digits_test,
    )
    assert model.module.conv1.out_channels == 16 and model.module.conv2.out_channels == 32
    assert model.module.fc_out.out_features == 10
    assert log.details["params_after"] <= 0.55 * log.details["params_before"]
    assert count_parameters(model.module) == log.details["params_after"]
    onnx_model = ss.ExportConfig().apply(model, ss.Context())
    (out,) = ss.load_predictor(onnx_model).predict({"input": digits_test.inputs["input"][:5]})
    assert out.shape == (5, 10)


def test_gradual_channel_pruning_with_finetune(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    config = {
        "granularity": "channel",
        "schedule": {"polynomial_decay": {"final_sparsity": 0.5, "end_step": 60, "frequency": 20}},
        "finetune": {"epochs": 4},
    }
    model, log = prune(config, digits_torch, digits_train, digits_test)
    assert model.module.conv2.out_channels == 32
    assert len(log.details["history"]) == 4  # steps 0, 20, 40, 60
    assert accuracy(model, digits_test) >= 0.96


def test_prune_config_errors() -> None:
    with pytest.raises(ValueError, match="exactly one of 'sparsity'"):
        ss.PruneConfig()
    with pytest.raises(ValueError, match="n:m fixes the sparsity"):
        ss.PruneConfig(granularity="n:m", sparsity=0.5)
    with pytest.raises(ValueError, match="0 < N < M"):
        ss.PruneConfig(granularity="n:m", n_m="4:2")


def test_recipe_error_inside_schedule_names_the_path() -> None:
    recipe = {
        "name": "t",
        "model": {"example": "digits"},
        "steps": [
            {"prune": {"schedule": {"polynomial_decay": {"final_sparsty": 0.5, "end_step": 9}}}}
        ],
    }
    with pytest.raises(
        ss.RecipeError,
        match=r"steps\[0\]\.prune\.schedule\.polynomial_decay\.final_sparsty: "
        r"unknown key.*'final_sparsity'",
    ):
        ss.parse_recipe(recipe)


def test_quantize_then_prune_is_refused_with_the_reason() -> None:
    recipe = {
        "name": "t",
        "model": {"example": "digits"},
        "steps": [{"quantize": {}}, {"prune": {"sparsity": 0.5}}],
    }
    with pytest.raises(ss.RecipeError, match="prune -> fine-tune -> quantize"):
        ss.parse_recipe(recipe)


def test_pruned_weights_save_compressed_bytes(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    from slimserve.measure.summary import model_size

    model, _ = prune({"sparsity": 0.8, "scope": "global"}, digits_torch, digits_train, digits_test)
    raw, compressed = model_size(model)
    base_raw, base_compressed = model_size(digits_torch)
    assert raw == base_raw
    assert compressed < 0.45 * base_compressed
    assert np.isfinite(accuracy(model, digits_test))


def test_per_layer_overrides_for_masks(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    config = {"sparsity": 0.5, "overrides": {"fc*": 0.9}}
    _, log = prune(config, digits_torch, digits_train, digits_test)
    layers = log.details["layer_sparsity"]
    assert layers["fc1"] == pytest.approx(0.9, abs=0.001)
    assert layers["conv2"] == pytest.approx(0.5, abs=0.001)


def test_per_layer_overrides_for_channels(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    config = {"granularity": "channel", "sparsity": 0.5, "overrides": {"fc1": 0.25}}
    model, _ = prune(config, digits_torch, digits_train, digits_test)
    assert model.module.conv2.out_channels == 32
    assert model.module.fc1.out_features == 96


def test_override_that_matches_nothing(digits_torch, digits_train, digits_test) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ss.SlimserveError, match="Override 'fc_9' matches no prunable layer"):
        prune(
            {"sparsity": 0.5, "overrides": {"fc_9": 0.9}}, digits_torch, digits_train, digits_test
        )
    with pytest.raises(ss.SlimserveError, match="need scope: layer"):
        prune(
            {"sparsity": 0.5, "scope": "global", "overrides": {"fc1": 0.9}},
            digits_torch,
            digits_train,
            digits_test,
        )
