"""The TF-MOT-shaped API: prune_low_magnitude, update_pruning_step, strip_pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimserve as ss
from slimserve.examples.digits import load_split


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def zero_fraction(module: nn.Module, names: list[str]) -> float:
    weights = [dict(module.named_parameters())[f"{n}.weight"] for n in names]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_fifty_percent_after_1000_steps() -> None:
    x, y = load_split("train")
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    schedule = ss.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=1000
    )
    model = ss.prune_low_magnitude(mlp(), pruning_schedule=schedule)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(1000):
        ss.update_pruning_step(model)
        idx = torch.randint(0, len(inputs), (32,), generator=generator)
        loss = nn.functional.cross_entropy(model(inputs[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stripped = ss.strip_pruning(model)
    assert zero_fraction(stripped, ["1", "3"]) == pytest.approx(0.5, abs=0.005)
    assert zero_fraction(stripped, ["5"]) == 0  # the classifier stays dense


def test_strip_pruning_leaves_a_plain_module() -> None:
    model = ss.prune_low_magnitude(mlp(), pruning_schedule=ss.ConstantSparsity(target_sparsity=0.7))
    ss.update_pruning_step(model)
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    stripped = ss.strip_pruning(model)
    names = {n for n, _ in stripped.named_parameters()}
    assert names == {f"{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")}
    assert not [n for n, _ in stripped.named_buffers()]
    assert not stripped._forward_pre_hooks
    torch.testing.assert_close(stripped(x), expected)
    assert zero_fraction(stripped, ["1", "3"]) == pytest.approx(0.7, abs=0.001)
    with pytest.raises(ss.SlimserveError, match="no pruning masks"):
        ss.strip_pruning(stripped)


def test_forgetting_update_pruning_step_is_an_error() -> None:
    model = ss.prune_low_magnitude(mlp(), pruning_schedule=ss.ConstantSparsity(target_sparsity=0.5))
    model.train()
    with pytest.raises(ss.SlimserveError, match="update_pruning_step"):
        model(torch.randn(2, 1, 8, 8))
    model.eval()
    model(torch.randn(2, 1, 8, 8))  # inference without steps is fine


@pytest.mark.parametrize(("zeros", "m"), [(2, 4), (4, 8), (1, 4)])
def test_n_m_pattern_is_valid(zeros: int, m: int) -> None:
    # TF-MOT's sparsity_m_by_n=(m, n): m zeros in every n consecutive weights
    model = ss.prune_low_magnitude(
        mlp(), pruning_schedule=ss.ConstantSparsity(target_sparsity=0.5), sparsity_m_by_n=(zeros, m)
    )
    n = m - zeros
    ss.update_pruning_step(model)
    ss.strip_pruning(model)
    for layer in (model[1], model[3]):
        groups = layer.weight.detach().reshape(layer.weight.shape[0], -1, m)
        assert ((groups != 0).sum(dim=-1) <= n).all()
        assert ((groups != 0).sum(dim=-1) == n).float().mean() > 0.99


def test_m_by_n_must_leave_weights() -> None:
    with pytest.raises(ss.SlimserveError, match="m zeros in every n"):
        ss.prune_low_magnitude(mlp(), ss.ConstantSparsity(0.5), sparsity_m_by_n=(4, 4))


def test_n_m_on_conv_groups_input_channels(digits_torch) -> None:  # type: ignore[no-untyped-def]
    import copy

    module = copy.deepcopy(digits_torch.module)
    model = ss.prune_low_magnitude(
        module, pruning_schedule=ss.ConstantSparsity(target_sparsity=0.5), sparsity_m_by_n=(2, 4)
    )
    pruner = ss.get_pruner(model)
    assert "conv1" in pruner.skipped  # one input channel cannot form groups of 4
    ss.update_pruning_step(model)
    ss.strip_pruning(model)
    weight = module.conv2.weight.detach().movedim(1, -1).reshape(-1, 4)
    assert ((weight != 0).sum(dim=1) <= 2).all()


def test_global_scope_and_exclude() -> None:
    model = ss.prune_low_magnitude(
        mlp(),
        pruning_schedule=ss.ConstantSparsity(target_sparsity=0.6),
        scope="global",
        exclude=["3"],
    )
    pruner = ss.get_pruner(model)
    assert list(pruner.layers) == ["1"]
    ss.update_pruning_step(model)
    assert pruner.sparsity() == pytest.approx(0.6, abs=0.001)


def test_everything_excluded_is_an_error() -> None:
    with pytest.raises(ss.SlimserveError, match="No layer is left to prune"):
        ss.prune_low_magnitude(
            mlp(), pruning_schedule=ss.ConstantSparsity(target_sparsity=0.5), exclude=["*"]
        )


def test_a_loaded_torch_model_is_pruned_and_an_onnx_one_is_refused_with_the_order(
    digits_torch: ss.TorchModel, digits_onnx: ss.OnnxModel
) -> None:
    import copy

    loaded = copy.deepcopy(digits_torch)
    schedule = ss.ConstantSparsity(0.5, begin_step=0)
    module = ss.prune_low_magnitude(loaded, pruning_schedule=schedule)
    assert module is loaded.module  # the TorchModel's own module, wrapped
    module.train()
    ss.update_pruning_step(module)
    module(loaded.example_inputs[0])
    ss.strip_pruning(module)
    conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    assert (conv.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ss.SlimserveError, match="prune -> fine-tune -> quantize"):
        ss.prune_low_magnitude(digits_onnx, pruning_schedule=schedule)
    with pytest.raises(ss.SlimserveError, match="not str"):
        ss.prune_low_magnitude("model.onnx", pruning_schedule=schedule)
