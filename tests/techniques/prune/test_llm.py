"""Depth and width pruning of a decoder LM: blocks, MLP channels and query heads chosen on
calibration text and physically removed; the smaller model runs in transformers and in
onnxruntime-genai with the expected shapes, and pruning nothing changes nothing."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from slimserve.core.context import Context
from slimserve.core.errors import DataError, RecipeError
from slimserve.models.causal_lm import load_causal_lm
from slimserve.models.torch import TorchModel
from slimserve.techniques.prune.llm import DepthPruneConfig, WidthPruneConfig
from slimserve.techniques.prune.llm_surgery import block_similarity, layers_to_drop


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory) -> TorchModel:
    from slimserve.examples.tiny_llama import build_tiny_llama

    return load_causal_lm(build_tiny_llama(tmp_path_factory.mktemp("llama4"), layers=4))


@pytest.fixture(scope="module")
def ctx() -> Context:
    from slimserve.data import english_split

    return Context(calibration_text="\n".join(english_split("calibration")))


def logits(model: TorchModel) -> torch.Tensor:
    with torch.no_grad():
        return model.module(*model.example_inputs)  # type: ignore[misc]


@pytest.mark.parametrize(
    "config", [DepthPruneConfig(layers=0), WidthPruneConfig()], ids=["depth", "width"]
)
def test_pruning_nothing_is_exact(four_layers: TorchModel, ctx: Context, config: object) -> None:
    pruned = config.apply(four_layers, ctx)  # type: ignore[attr-defined]
    assert torch.equal(logits(pruned), logits(four_layers))


def test_depth_removes_the_blocks_that_change_their_input_least(
    four_layers: TorchModel, ctx: Context
) -> None:
    pruned = DepthPruneConfig(layers=2, calibration_samples=8).apply(four_layers, ctx)
    hf = pruned.module.model  # type: ignore[union-attr]
    assert hf.config.num_hidden_layers == 2 and len(hf.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in hf.model.layers] == [0, 1]
    influence = ctx.log.details["block_influence"]
    dropped = ctx.log.details["dropped_layers"]
    assert sorted(influence)[:2] == sorted(influence[i] for i in dropped)
    # the kept blocks are the original's, renumbered
    kept = [i for i in range(4) if i not in dropped]
    original = four_layers.module.model.model.layers  # type: ignore[union-attr]
    for new, old in enumerate(kept):
        assert torch.equal(
            hf.model.layers[new].mlp.up_proj.weight, original[old].mlp.up_proj.weight
        )
    assert logits(pruned).shape == logits(four_layers).shape
    assert "Depth pruning removed 2 of 4 decoder blocks" in ctx.log.notes[-1]


def test_angular_distance_removes_a_run_of_consecutive_blocks(
    four_layers: TorchModel, ctx: Context
) -> None:
    from slimserve.models.hf import load_tokenizer
    from slimserve.techniques.prune.llm_surgery import calibration_batches

    assert four_layers.hf_folder is not None
    tokens = list(load_tokenizer(four_layers.hf_folder)(ctx.calibration_text)["input_ids"])
    similarity = block_similarity(four_layers.module.model, calibration_batches(tokens, 4))  # type: ignore[union-attr]
    assert similarity.shape == (5, 5)
    assert similarity.diagonal() == pytest.approx(1.0, abs=1e-4)
    run = layers_to_drop(similarity, 2, "angular")
    assert run == list(range(run[0], run[0] + 2))


def test_a_speedup_target_picks_the_block_count(four_layers: TorchModel, ctx: Context) -> None:
    pruned = DepthPruneConfig(speedup=1.2).apply(four_layers, ctx)
    assert pruned.module.model.config.num_hidden_layers == 3  # type: ignore[union-attr]
    with pytest.raises(RecipeError, match="out of reach"):
        DepthPruneConfig(speedup=50).apply(four_layers, ctx)
    with pytest.raises(RecipeError, match="has 4 decoder blocks"):
        DepthPruneConfig(layers=4).apply(four_layers, ctx)


def test_width_pruning_equals_the_original_with_those_channels_and_heads_zeroed(
    four_layers: TorchModel, ctx: Context
) -> None:
    config = WidthPruneConfig(mlp=0.5, heads=0.5, round_to=16)
    pruned = config.apply(four_layers, ctx)
    hf = pruned.module.model  # type: ignore[union-attr]
    assert hf.config.intermediate_size == 64 and hf.config.num_attention_heads == 2
    assert hf.config.num_key_value_heads == 2 and hf.config.head_dim == 16
    layer = hf.model.layers[0]
    assert tuple(layer.mlp.down_proj.weight.shape) == (64, 64)
    assert tuple(layer.self_attn.q_proj.weight.shape) == (32, 64)
    # the same function as the original whose removed channels and heads add nothing
    masked = load_causal_lm(four_layers.hf_folder)  # type: ignore[arg-type]
    for index, original in enumerate(masked.module.model.model.layers):  # type: ignore[union-attr]
        kept_rows = {tuple(r.tolist()) for r in hf.model.layers[index].mlp.up_proj.weight}
        dead = [
            c
            for c, row in enumerate(original.mlp.up_proj.weight)
            if tuple(row.tolist()) not in kept_rows
        ]
        assert len(dead) == 64
        kept_q = {tuple(r.tolist()) for r in hf.model.layers[index].self_attn.q_proj.weight}
        with torch.no_grad():
            original.mlp.down_proj.weight[:, dead] = 0
            for head in range(4):
                rows = original.self_attn.q_proj.weight[head * 16 : (head + 1) * 16]
                if tuple(rows[0].tolist()) not in kept_q:
                    original.self_attn.o_proj.weight[:, head * 16 : (head + 1) * 16] = 0
    torch.testing.assert_close(logits(pruned), logits(masked), atol=1e-4, rtol=1e-4)


def test_every_group_keeps_its_kv_head_and_a_query(four_layers: TorchModel, ctx: Context) -> None:
    hf = WidthPruneConfig(heads=0.9).apply(four_layers, ctx).module.model  # type: ignore[union-attr]
    assert hf.config.num_attention_heads == 2 and hf.config.num_key_value_heads == 2


def test_pruning_needs_calibration_text(four_layers: TorchModel) -> None:
    with pytest.raises(RecipeError, match="calibration text"):
        DepthPruneConfig(layers=1).apply(four_layers, Context())
    with pytest.raises(DataError, match=r"fewer than one window of 128.*data.calibration"):
        WidthPruneConfig(mlp=0.5).apply(four_layers, Context(calibration_text="a few words"))


def test_a_config_gives_one_target() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="exactly one of 'layers'"):
        DepthPruneConfig(layers=2, speedup=1.3)
    with pytest.raises(pydantic.ValidationError, match="exactly one of 'layers'"):
        DepthPruneConfig()
