"""TF-MOT's pruning wrapper for Keras 3 (``PruneLowMagnitude``) and the registry of
which weights it masks in which layer; the public API is ``slimserve.keras``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any, Literal

import torch

from slimserve.core.errors import SlimserveError
from slimserve.models.keras import check_keras3, import_keras
from slimserve.techniques.prune.masks import block_mask, magnitude_mask, n_m_mask
from slimserve.techniques.prune.schedules import ConstantSparsity, PolynomialDecay, Schedule

keras = import_keras("slimserve.keras")
layers = keras.layers

layers = keras.layers

# Built-in layers and the weights TF-MOT prunes in them (its PruneRegistry).
PRUNABLE_WEIGHTS: dict[type, tuple[str, ...]] = {
    layers.Dense: ("kernel",),
    layers.EinsumDense: ("kernel",),
    layers.Conv1D: ("kernel",),
    layers.Conv2D: ("kernel",),
    layers.Conv3D: ("kernel",),
    layers.Conv1DTranspose: ("kernel",),
    layers.Conv2DTranspose: ("kernel",),
    layers.Conv3DTranspose: ("kernel",),
    layers.SeparableConv1D: ("pointwise_kernel",),
    layers.SeparableConv2D: ("pointwise_kernel",),
    layers.Embedding: ("embeddings",),
    layers.MultiHeadAttention: (
        "_query_dense.kernel",
        "_key_dense.kernel",
        "_value_dense.kernel",
        "_output_dense.kernel",
    ),
}
# Layers with weights that are not pruned (as in TF-MOT: their weights are scales/shifts).
NOT_PRUNED: tuple[type, ...] = (
    layers.BatchNormalization,
    layers.LayerNormalization,
    layers.GroupNormalization,
    layers.DepthwiseConv1D,
    layers.DepthwiseConv2D,
)

_CALLBACK_MISSING = (
    "Training a model wrapped by prune_low_magnitude without the UpdatePruningStep "
    "callback: the masks would never move. Add it to fit: "
    "model.fit(..., callbacks=[slimserve.keras.UpdatePruningStep()])."
)


def _snake(name: str) -> str:
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def get_prunable_weights(layer: Any) -> list[Any]:
    """The variables ``prune_low_magnitude`` masks in ``layer`` (``[]``: nothing to prune).

    A custom layer says which of its weights to prune with a ``get_prunable_weights()``
    method, as TF-MOT's ``PrunableLayer``. Other layers with weights are refused.
    """
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    for cls, paths in PRUNABLE_WEIGHTS.items():
        if isinstance(layer, cls):
            found = []
            for path in paths:
                target = layer
                for part in path.split("."):
                    target = getattr(target, part)
                found.append(target)
            return found
    if isinstance(layer, NOT_PRUNED) or not layer.weights:
        return []
    raise SlimserveError(
        f"Layer '{layer.name}' ({type(layer).__name__}) has weights but slimserve does not "
        "know which of them to prune. Give the layer a get_prunable_weights() method that "
        "returns them (TF-MOT's PrunableLayer protocol), or prune only the other layers: "
        "wrap them one by one with prune_low_magnitude(layer) when building the model."
    )


def _to_torch_layout(weight: torch.Tensor) -> torch.Tensor:
    """Keras kernels are (..., in, out); torch's mask code groups along axis 1 of (out, in, ...)."""
    return weight.movedim(-1, 0).movedim(-1, 1)


def _from_torch_layout(mask: torch.Tensor) -> torch.Tensor:
    return mask.movedim(1, -1).movedim(0, -1)


@keras.saving.register_keras_serializable(package="slimserve")
class PruneLowMagnitude(keras.layers.Wrapper):  # type: ignore[misc,name-defined]
    """Masks a layer's weights by magnitude as its schedule asks (TF-MOT's wrapper).

    Each prunable weight gets a mask and a threshold variable; ``pruning_step`` counts
    training batches (-1 until ``UpdatePruningStep`` starts it). The weights are multiplied
    by their masks before every call, so pruned weights stay zero through training.
    """

    def __init__(
        self,
        layer: Any,
        pruning_schedule: Schedule | None = None,
        block_size: Sequence[int] = (1, 1),
        block_pooling_type: Literal["AVG", "MAX"] = "AVG",
        sparsity_m_by_n: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        check_keras3(layer, "The layer")
        if not isinstance(layer, keras.layers.Layer):
            raise SlimserveError(
                f"prune_low_magnitude wraps a keras.layers.Layer, got {type(layer).__name__}."
            )
        schedule = pruning_schedule or ConstantSparsity(0.5, 0)
        if not isinstance(schedule, ConstantSparsity | PolynomialDecay):
            raise SlimserveError(
                f"pruning_schedule must be slimserve.keras.PolynomialDecay or ConstantSparsity, "
                f"got {type(schedule).__name__}."
            )
        if block_pooling_type not in ("AVG", "MAX"):
            raise SlimserveError(
                f"Unsupported block_pooling_type '{block_pooling_type}'. Use 'AVG' or 'MAX'."
            )
        block = tuple(int(b) for b in block_size)
        if len(block) != 2 or min(block) < 1:
            raise SlimserveError(f"block_size must be two positive integers, got {block_size}.")
        m_by_n = None
        if sparsity_m_by_n is not None:
            m_by_n = tuple(int(v) for v in sparsity_m_by_n)
            if len(m_by_n) != 2 or not 0 < m_by_n[0] < m_by_n[1]:
                raise SlimserveError(
                    f"sparsity_m_by_n must be (m, n) with 0 < m < n (m zeros in every n "
                    f"consecutive weights), got {sparsity_m_by_n}."
                )
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = schedule
        self.block_size = block
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = m_by_n
        self.supports_jit = False  # the step and the masks are updated in Python
        self._layer_takes_training = "training" in inspect.signature(layer.call).parameters
        self.mask_updates = 0  # how often the schedule fired (UpdatePruningStep zeroes it per fit)

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        self.prunable_weights = get_prunable_weights(self.layer)
        names = [w.name for w in self.prunable_weights]
        self.masks, self.thresholds = [], []
        for index, weight in enumerate(self.prunable_weights):
            self._check_shape(weight)
            stem = weight.name if names.count(weight.name) == 1 else f"{weight.name}_{index}"
            self.masks.append(
                self.add_weight(
                    name=f"{stem}_mask",
                    shape=weight.shape,
                    initializer="ones",
                    dtype=weight.dtype,
                    trainable=False,
                )
            )
            self.thresholds.append(
                self.add_weight(
                    name=f"{stem}_threshold",
                    shape=(),
                    initializer="zeros",
                    dtype=weight.dtype,
                    trainable=False,
                )
            )
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            initializer=keras.initializers.Constant(-1),
            dtype="int64",
            trainable=False,
        )

    def _check_shape(self, weight: Any) -> None:
        if self.block_size != (1, 1) and len(weight.shape) != 2:
            raise SlimserveError(
                f"Block sparsity needs 2-D weights, but '{self.layer.name}' has "
                f"{weight.name} of shape {tuple(weight.shape)}. Use block_size=(1, 1) for it."
            )
        if self.sparsity_m_by_n is not None:
            group = self.sparsity_m_by_n[1]
            inputs = weight.shape[-2] if len(weight.shape) >= 2 else weight.shape[0]
            if len(weight.shape) < 2 or inputs % group:
                raise SlimserveError(
                    f"sparsity_m_by_n={self.sparsity_m_by_n} needs the input size of "
                    f"'{self.layer.name}' ({inputs}) to be a multiple of {group}."
                )

    @property
    def step(self) -> int:
        return int(self.pruning_step.value)

    def call(self, inputs: Any, training: bool | None = None, **kwargs: Any) -> Any:
        if training:
            if self.step < 0:
                raise SlimserveError(_CALLBACK_MISSING)
            step = self.step + 1
            self.pruning_step.assign(step)
            # N:M masks are set once, at the first step, as in TF-MOT.
            update, sparsity = self.pruning_schedule(step)
            if self.sparsity_m_by_n is not None:
                update = step == 1
            if update:
                self.update_masks(sparsity)
                self.mask_updates += 1
        self.apply_masks()
        if self._layer_takes_training:
            kwargs["training"] = training
        return self.layer(inputs, **kwargs)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(inputs, *args, **kwargs)

    def update_masks(self, sparsity: float) -> None:
        """New masks for ``sparsity`` from the current (masked) weights."""
        with torch.no_grad():
            for weight, mask, threshold in zip(
                self.prunable_weights, self.masks, self.thresholds, strict=True
            ):
                values = weight.value.detach() * mask.value
                new = self._mask_for(values, sparsity)
                mask.assign(new)
                kept = values.abs()[new > 0]
                threshold.assign(kept.min() if kept.numel() else torch.zeros(()))

    def _mask_for(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        if self.sparsity_m_by_n is not None:
            zeros, group = self.sparsity_m_by_n
            mask = n_m_mask(_to_torch_layout(weight), group - zeros, group)
            return _from_torch_layout(mask)
        if self.block_size != (1, 1):
            return block_mask(weight, sparsity, self.block_size, self.block_pooling_type)
        return magnitude_mask(weight, sparsity)

    def apply_masks(self) -> None:
        """weight = weight * mask, in place (keeps pruned weights at zero)."""
        with torch.no_grad():
            for weight, mask in zip(self.prunable_weights, self.masks, strict=True):
                weight.assign(weight.value * mask.value)

    def sparsity(self) -> float:
        """Fraction of zeros in the masks of this layer's prunable weights."""
        total = sum(int(m.value.numel()) for m in self.masks)
        zeros = sum(float((m.value == 0).sum()) for m in self.masks)
        return zeros / total if total else 0.0

    def get_config(self) -> dict[str, Any]:
        schedule = self.pruning_schedule
        return {
            **super().get_config(),
            "pruning_schedule": {
                "class_name": type(schedule).__name__,
                "config": schedule.model_dump(),
            },
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": list(self.sparsity_m_by_n) if self.sparsity_m_by_n else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Any:
        config = dict(config)
        spec = config.pop("pruning_schedule")
        kinds: dict[str, type[Schedule]] = {
            "ConstantSparsity": ConstantSparsity,
            "PolynomialDecay": PolynomialDecay,
        }
        if spec.get("class_name") not in kinds:
            raise SlimserveError(f"Unknown pruning schedule {spec.get('class_name')!r}.")
        schedule: Schedule = kinds[spec["class_name"]](**spec["config"])
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        return cls(layer, pruning_schedule=schedule, **config)
