"""Quantization-aware training: fake-quant in torch, then an int8 QDQ model for ORT.

Every Conv/Linear layer trains through the same rounding ONNX Runtime's static int8
will apply: weights per output channel, symmetric int8 (scale = max|w| / 127.5, as ORT
computes it); inputs per tensor, asymmetric uint8 with ranges tracked by a moving
average and frozen for the last part of training. Pruning zeros stay zero (their masks
are kept). The trained float model is exported, and ORT's static quantizer builds the
QDQ graph with the learned input ranges (TensorQuantOverrides) instead of calibrating
them; what QAT did not see (e.g. the final output) is calibrated as usual.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from slimserve.core.context import Context
from slimserve.core.errors import SlimserveError
from slimserve.models.onnx import OnnxModel
from slimserve.models.torch import TorchModel
from slimserve.techniques.export import ExportConfig
from slimserve.techniques.finetune import (
    FinetuneConfig,
    Ramp,
    eval_subset,
    make_metric,
    run_finetune,
)
from slimserve.techniques.quantize.configs import CalibrationConfig, StaticQuantizeConfig
from slimserve.techniques.quantize.ort import quantize_onnx

QUANTIZED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class FakeQuant(nn.Module):
    """Wraps one Conv/Linear: fake-quantized input (uint8, per tensor) and weight (int8,
    per channel); a pruning mask, if the layer has zeros, keeps them zero."""

    low: torch.Tensor
    high: torch.Tensor
    mask: torch.Tensor | None

    def __init__(self, layer: nn.Module, momentum: float) -> None:
        super().__init__()
        self.layer = layer
        self.momentum = momentum
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        zeros = weight == 0
        self.register_buffer("mask", (~zeros).to(weight.dtype) if zeros.any() else None)
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.observing = True
        self.seen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing and self.training:
            self._observe(x.detach())
        x = self._fake_quant_input(x)
        weight = self.layer.weight
        assert isinstance(weight, torch.Tensor)
        if self.mask is not None:
            weight = weight * self.mask
        weight = _fake_quant_weight(weight)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, self.layer.bias)
        conv: Any = self.layer
        return conv._conv_forward(x, weight, conv.bias)  # type: ignore[no-any-return]

    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min(), x.max()
        if not self.seen:
            self.low.copy_(low)
            self.high.copy_(high)
            self.seen = True
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)

    def _fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.seen:
            return x
        low = torch.clamp(self.low, max=0.0)
        high = torch.clamp(self.high, min=0.0)
        scale = torch.clamp((high - low) / 255.0, min=1e-8)
        zero_point = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    def bake(self) -> nn.Module:
        """The plain layer with the masked weights; the quantizer does the rest."""
        if self.mask is not None:
            with torch.no_grad():
                self.layer.weight.mul_(self.mask)  # type: ignore[operator]
        return self.layer


def _fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, weight.ndim))
    scale = torch.clamp(weight.detach().abs().amax(dim=dims) * 2 / 255.0, min=1e-8)
    zero_point = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -128, 127)


@dataclass
class QATState:
    """The wrapped layers of a module under QAT. Made by ``attach``."""

    module: nn.Module
    wrappers: dict[str, FakeQuant]

    def freeze_ranges(self) -> None:
        for wrapper in self.wrappers.values():
            wrapper.observing = False

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {name: (float(w.low), float(w.high)) for name, w in self.wrappers.items() if w.seen}

    def finalize(self) -> nn.Module:
        """Put the plain layers back (weights baked); the module is a float model again."""
        for name, wrapper in self.wrappers.items():
            _set_submodule(self.module, name, wrapper.bake())
        return self.module


def attach(module: nn.Module, exclude: tuple[str, ...] = (), momentum: float = 0.01) -> QATState:
    """Wrap every Conv/Linear (minus ``exclude`` name patterns) in a FakeQuant."""
    targets = {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, QUANTIZED_LAYERS)
        and name
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }
    if not targets:
        raise SlimserveError(
            "QAT found no Conv/Linear layer to train for quantization (check qat.exclude)."
        )
    wrappers = {}
    for name, layer in targets.items():
        wrappers[name] = FakeQuant(layer, momentum)
        _set_submodule(module, name, wrappers[name])
    return QATState(module, wrappers)


def _set_submodule(root: nn.Module, name: str, value: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, value)


class QATConfig(BaseModel):
    """Quantization-aware training, then static int8 QDQ with the learned ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "qat"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = True

    finetune: FinetuneConfig = Field(
        default_factory=lambda: FinetuneConfig(epochs=3, lr=1e-4),
        description="Training with fake quantization (labels, distillation or both).",
    )
    freeze_ranges_after: float = Field(
        0.5, ge=0, le=1, description="Fraction of training after which input ranges stop moving."
    )
    momentum: float = Field(0.01, gt=0, le=1, description="Moving-average rate of the ranges.")
    exclude: tuple[str, ...] = Field((), description="Layer-name patterns kept in float.")
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig,
        description="For tensors QAT does not train (the final output).",
    )
    export: ExportConfig = Field(
        default_factory=ExportConfig, description="How the trained model is exported."
    )

    def describe(self) -> str:
        return "qat int8"

    def apply(self, model: TorchModel, ctx: Context) -> OnnxModel:
        return quantization_aware_training(model, self, ctx)


def quantization_aware_training(model: TorchModel, config: QATConfig, ctx: Context) -> OnnxModel:
    """Train ``model`` with fake quantization, then quantize it with the learned ranges."""
    from slimserve.techniques.finetune import total_steps, train_split

    module = model.module
    state = attach(module, config.exclude, config.momentum)
    metric_fn = make_metric(model, ctx, eval_subset(ctx, model))
    freeze_at = int(
        total_steps(train_split(ctx, model), config.finetune) * config.freeze_ranges_after
    )
    ramp = Ramp(
        is_update=lambda step: step == freeze_at,
        apply=lambda step: state.freeze_ranges(),
        sparsity=lambda: 0.0,
    )
    history = run_finetune(model, config.finetune, ctx, ramp, metric_fn)
    ranges = state.ranges()
    float_model = model.with_module(state.finalize().eval())
    exported = config.export.apply(float_model, ctx)
    tensor_ranges = _tensor_ranges(exported, ranges)
    unmatched = sorted(set(ranges) - set(tensor_ranges))
    if unmatched:
        ctx.log.notes.append(
            f"QAT: no ONNX node found for {', '.join(unmatched)}; their input ranges are "
            "calibrated instead of learned."
        )
    quantize = StaticQuantizeConfig(
        per_channel=True,
        weights="int8",
        activations="uint8",
        preprocess=False,
        calibration=config.calibration,
    )
    calibration = ctx.split("calibration", "train")
    by_tensor = {tensor: ranges[layer] for layer, tensor in tensor_ranges.items()}
    quantized = quantize_onnx(exported, quantize, calibration, ctx.work_dir, by_tensor)
    ctx.log.details.update(
        {
            "learned_ranges": {k: list(v) for k, v in ranges.items()},
            "losses": history.losses[:: max(1, len(history.losses) // 400)],
            "loss_stride": max(1, len(history.losses) // 400),
            "metric_after": metric_fn(float_model.module),
        }
    )
    return quantized


def _tensor_ranges(model: OnnxModel, ranges: dict[str, tuple[float, float]]) -> dict[str, str]:
    """torch layer name -> ONNX input tensor, for the layers QAT learned a range for."""
    return {layer: tensor for layer, tensor in _node_inputs(model).items() if layer in ranges}


def _node_inputs(model: OnnxModel) -> dict[str, str]:
    """torch layer name -> the ONNX tensor its Conv/Gemm/MatMul node reads, from the
    exporter's scope metadata (``pkg.torch.onnx.name_scopes``)."""
    import ast

    found: dict[str, str] = {}
    for node in model.proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        if not scopes:
            continue
        parts = ast.literal_eval(scopes)
        layer = ".".join(p for p in parts[1:-1] if p)
        found.setdefault(layer, node.input[0])
    return found
