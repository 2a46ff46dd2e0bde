"""Head + FFN pruning of a BERT-style encoder (a 2-layer BERT built from a config)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.core.metrics import fidelity

transformers = pytest.importorskip("transformers")


class MeanPooledBert(nn.Module):
    """Sentence embeddings as sentence-transformers computes them: mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=500,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
        )
        self.bert = transformers.BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


@pytest.fixture(scope="module")
def encoder() -> ss.TorchModel:
    torch.manual_seed(0)
    module = MeanPooledBert().eval()
    ids = torch.randint(0, 500, (2, 12))
    return ss.TorchModel(
        module, (ids, torch.ones_like(ids)), ("input_ids", "attention_mask"), ("embedding",)
    )


def tokens(count: int) -> ss.Dataset:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, size=(count, 12))
    return ss.Dataset({"input_ids": ids, "attention_mask": np.ones_like(ids)})


def heads_and_ffn(module: nn.Module) -> list[tuple[int, int]]:
    return [
        (layer.attention.self.num_attention_heads, layer.intermediate.dense.out_features)
        for layer in module.bert.encoder.layer
    ]


def test_one_shot_head_pruning_halves_heads_and_ffn(encoder: ss.TorchModel) -> None:
    config = ss.PruneConfig(granularity="head", sparsity=0.5)
    log = StepLog()
    pruned = config.apply(copy.deepcopy(encoder), ss.Context(log=log, reference=encoder))
    assert heads_and_ffn(pruned.module) == [(2, 128), (2, 128)]
    assert pruned.module.bert.encoder.layer[0].attention.output.dense.out_features == 64
    assert log.details["params_after"] < log.details["params_before"]
    out = pruned.module(*encoder.example_inputs)
    assert out.shape == (2, 64)
    onnx_model = ss.ExportConfig().apply(pruned, ss.Context())
    batch = tokens(5)
    (embedding,) = ss.load_predictor(onnx_model).predict(batch.inputs)
    assert embedding.shape == (5, 64)


def test_gradual_head_pruning_with_distillation_on_unlabeled_tokens(encoder: ss.TorchModel) -> None:
    config = ss.PruneConfig.model_validate(
        {
            "granularity": "head",
            "schedule": {
                "polynomial_decay": {"final_sparsity": 0.5, "end_step": 8, "frequency": 4}
            },
            "finetune": {"epochs": 3, "batch_size": 16, "lr": 1e-4},
        }
    )
    data = tokens(64)
    log = StepLog()
    ctx = ss.Context(data={"train": data, "eval": data}, reference=encoder, log=log)
    pruned = config.apply(copy.deepcopy(encoder), ctx)
    assert heads_and_ffn(pruned.module) == [(2, 128), (2, 128)]
    # The step watches the cosine with the original's embeddings (the goal metric), the
    # number the pipeline's evaluation reports, not the argmax of embedding coordinates.
    first = log.details["history"][0]
    assert first["step"] == 0 and first["metric_before"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        inputs = [torch.from_numpy(data.inputs[n]) for n in ("input_ids", "attention_mask")]
        expected = fidelity(encoder.module(*inputs).numpy(), pruned.module(*inputs).numpy())
    assert log.details["metric_after"] == pytest.approx(expected["cosine_mean"], abs=1e-4)
    assert log.details["metric_after"] > 0.5


def test_distillation_of_embeddings_uses_cosine_by_default(encoder: ss.TorchModel) -> None:
    from dataclasses import replace

    from slimserve.techniques.finetune import FinetuneConfig, _resolve_distill_loss

    hf_like = replace(encoder, output_names=("embeddings",))
    assert _resolve_distill_loss(FinetuneConfig(), hf_like).distill_loss == "cosine"
    assert _resolve_distill_loss(FinetuneConfig(distill_loss="mse"), hf_like).distill_loss == "mse"
    logits = replace(encoder, output_names=("logits",))
    assert _resolve_distill_loss(FinetuneConfig(), logits).distill_loss == "auto"


def test_head_pruning_needs_an_encoder(digits_torch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ss.SlimserveError, match="needs a BERT-style encoder"):
        ss.PruneConfig(granularity="head", sparsity=0.5).apply(
            copy.deepcopy(digits_torch), ss.Context(reference=digits_torch)
        )


def test_head_step_ratios_reach_the_schedule_targets() -> None:
    import math

    from slimserve.techniques.prune.structured import head_step_ratios

    current = 12
    for ratio, step_ratio in zip(
        [0.2, 0.4, 0.5], head_step_ratios(12, [0.2, 0.4, 0.5])[1:], strict=True
    ):
        current -= math.ceil(step_ratio * current)  # what torch-pruning removes
        assert current == round(12 * (1 - ratio))


def layer_outputs(module: nn.Module, data: ss.Dataset) -> list[torch.Tensor]:
    inputs = [torch.from_numpy(data.inputs[n]) for n in ("input_ids", "attention_mask")]
    with torch.no_grad():
        hidden = module.bert(
            input_ids=inputs[0], attention_mask=inputs[1], output_hidden_states=True
        )
    return list(hidden.hidden_states[1:])


def test_layer_distillation_brings_the_pruned_layers_closer_to_the_original(
    encoder: ss.TorchModel,
) -> None:
    data = tokens(128)
    errors = {}
    for layers in ((), ("*encoder.layer.*",)):
        config = ss.PruneConfig.model_validate(
            {
                "granularity": "head",
                "schedule": {
                    "polynomial_decay": {"final_sparsity": 0.5, "end_step": 8, "frequency": 4}
                },
                "finetune": {
                    "epochs": 4,
                    "batch_size": 16,
                    "lr": 1e-3,
                    "distill_layers": list(layers),
                },
            }
        )
        ctx = ss.Context(data={"train": data, "eval": data}, reference=encoder, log=StepLog())
        pruned = config.apply(copy.deepcopy(encoder), ctx).module
        for module in (pruned, encoder.module):  # the taps are removed
            hooks = [h for m in module.modules() for h in m._forward_hooks.values()]
            assert not [h for h in hooks if "LayerTaps" in h.__qualname__]
        pairs = zip(layer_outputs(pruned, data), layer_outputs(encoder.module, data), strict=True)
        errors[layers] = float(sum(nn.functional.mse_loss(s, t) for s, t in pairs))
    assert errors[("*encoder.layer.*",)] < 0.5 * errors[()]


def test_layer_distillation_errors_name_the_problem(
    encoder: ss.TorchModel, digits_torch: ss.TorchModel
) -> None:
    def run(model: ss.TorchModel, granularity: str, layers: list[str], data: ss.Dataset) -> None:
        config = ss.PruneConfig.model_validate(
            {
                "granularity": granularity,
                "schedule": {
                    "polynomial_decay": {"final_sparsity": 0.5, "end_step": 2, "frequency": 1}
                },
                "finetune": {"epochs": 1, "batch_size": 16, "distill_layers": layers},
            }
        )
        ctx = ss.Context(data={"train": data, "eval": data}, reference=model, log=StepLog())
        config.apply(copy.deepcopy(model), ctx)

    with pytest.raises(ss.SlimserveError, match=r"match no module.*bert\.embeddings"):
        run(encoder, "head", ["*decoder*"], tokens(64))
    pixels = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    digits = ss.Dataset({"input": pixels})
    with pytest.raises(ss.SlimserveError, match="keep their shape"):
        run(digits_torch, "channel", ["conv1"], digits)
    labelled = ss.Dataset({"input": pixels}, np.arange(64) % 10)
    config = ss.PruneConfig.model_validate(
        {
            "sparsity": 0.5,
            "finetune": {"epochs": 1, "distill": 0, "distill_layers": ["fc1"]},
        }
    )
    ctx = ss.Context(data={"train": labelled}, reference=digits_torch, log=StepLog())
    with pytest.raises(ss.RecipeError, match="distill is 0"):
        config.apply(copy.deepcopy(digits_torch), ctx)


def test_taylor_gradients_on_text_match_one_full_width_batch(tiny_bert) -> None:  # type: ignore[no-untyped-def]
    from slimserve.examples.minilm import english_sentences
    from slimserve.models.hf import load_hf, load_tokenizer, tokenize
    from slimserve.techniques.prune.train import _taylor_gradients

    model = load_hf(tiny_bert)
    model.module.eval()  # no dropout: the two gradients must be comparable
    encoded = tokenize(load_tokenizer(tiny_bert), english_sentences(80), 128)
    data = ss.Dataset({n: encoded[n] for n in model.input_names})
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.module.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a teacher that differs: non-zero loss
    ctx = ss.Context(data={"train": data}, reference=teacher)
    _taylor_gradients(model, ctx)
    chunked = [None if p.grad is None else p.grad.clone() for p in model.module.parameters()]
    assert sum(g is not None for g in chunked) > 10
    model.module.zero_grad()
    inputs = [torch.from_numpy(encoded[n]) for n in model.input_names]
    with torch.no_grad():
        target = teacher.module(*inputs)
    nn.functional.mse_loss(model.module(*inputs), target).backward()
    for got, want in zip(chunked, (p.grad for p in model.module.parameters()), strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-3)
