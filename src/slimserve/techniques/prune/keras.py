"""TF Model Optimization's Keras pruning API, for Keras 3: migrating is a change of import.

    import slimserve.keras as sparsity      # was: tfmot.sparsity.keras
    model = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=1000))
    model.compile(...)
    model.fit(x, y, callbacks=[sparsity.UpdatePruningStep()])
    model = sparsity.strip_pruning(model)   # plain Keras layers, zeros baked in

Keras runs on its torch backend (set here unless ``KERAS_BACKEND`` is already set, which
must then be ``torch``); no TensorFlow is needed. The schedules and the mask functions
are the ones slimserve's PyTorch path uses (``slimserve.techniques.prune``), with TF-MOT's step
semantics: ``UpdatePruningStep`` sets each wrapper's step to 0 when training starts, and
every training batch first advances it and then updates the masks when the schedule says
so, so after N batches the step is N.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from slimserve.core.errors import SlimserveError
from slimserve.models.keras import check_keras3, import_keras
from slimserve.techniques.prune.masks import block_mask, magnitude_mask, n_m_mask
from slimserve.techniques.prune.schedules import ConstantSparsity, PolynomialDecay, Schedule

keras = import_keras("slimserve.keras")
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


def prune_low_magnitude(
    to_prune: Any,
    pruning_schedule: Schedule | None = None,
    block_size: Sequence[int] = (1, 1),
    block_pooling_type: Literal["AVG", "MAX"] = "AVG",
    sparsity_m_by_n: Sequence[int] | None = None,
    **kwargs: Any,
) -> Any:
    """Wrap a Keras model's layers (or one layer, or a list of layers) for pruning.

    As in TF-MOT: a Sequential or functional model is cloned with every layer that has
    prunable weights wrapped (sharing the original weights; compile it again afterwards),
    a layer comes back wrapped, a list comes back as a list. The default schedule is
    ``ConstantSparsity(0.5, 0)``. ``block_size=(h, w)`` prunes whole blocks of 2-D
    weights; ``sparsity_m_by_n=(2, 4)`` zeroes 2 of every 4 consecutive input weights.
    """
    params: dict[str, Any] = {
        "pruning_schedule": pruning_schedule,
        "block_size": block_size,
        "block_pooling_type": block_pooling_type,
        "sparsity_m_by_n": sparsity_m_by_n,
    }
    check_keras3(to_prune, "The object given to prune_low_magnitude")
    if isinstance(to_prune, list):
        return [
            layer
            if isinstance(layer, PruneLowMagnitude | keras.layers.InputLayer)
            else PruneLowMagnitude(layer, **params)
            for layer in to_prune
        ]
    if isinstance(to_prune, keras.Model):
        _require_graph_model(to_prune)

        def wrap(layer: Any) -> Any:
            if isinstance(layer, keras.Model):
                _require_graph_model(layer)
                return keras.models.clone_model(layer, clone_function=wrap)
            if isinstance(layer, PruneLowMagnitude):
                raise SlimserveError(
                    f"Layer '{layer.name}' is already wrapped by prune_low_magnitude."
                )
            if isinstance(layer, keras.layers.InputLayer):
                return layer
            # A built layer shows its weights; an unbuilt one is wrapped, as TF-MOT wraps
            # every layer, and its wrapper finds out at build time.
            if layer.built and not get_prunable_weights(layer):
                return layer
            return PruneLowMagnitude(layer, **params)

        return keras.models.clone_model(to_prune, clone_function=wrap)
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    raise SlimserveError(
        "prune_low_magnitude takes a keras.Sequential or functional keras.Model, a "
        f"keras.layers.Layer or a list of layers; got {type(to_prune).__name__}."
    )


def _require_graph_model(model: Any) -> None:
    # Sequential and functional models are graphs of layers (keras.ops.Function); a
    # subclassed model's structure lives in its Python call().
    if not isinstance(model, keras.Sequential | keras.Function):
        raise SlimserveError(
            f"'{model.name}' is a subclassed keras.Model, which cannot be cloned layer by "
            "layer (TF-MOT has the same limit). Wrap its layers with "
            "prune_low_magnitude(layer) inside the model's __init__ instead."
        )


def collect_prunable_layers(model: Any) -> list[PruneLowMagnitude]:
    """Every PruneLowMagnitude wrapper in ``model``, nested models included."""
    found: list[PruneLowMagnitude] = []
    for layer in model.layers:
        if isinstance(layer, PruneLowMagnitude):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(collect_prunable_layers(layer))
    return found


def strip_pruning(model: Any) -> Any:
    """A clone of ``model`` with every pruning wrapper replaced by its layer, zeros baked in."""
    check_keras3(model)
    if not isinstance(model, keras.Model):
        raise SlimserveError(
            f"strip_pruning takes a keras.Model, got {type(model).__name__}. For a single "
            "wrapped layer, use layer.layer after calling layer.apply_masks()."
        )

    def strip(layer: Any) -> Any:
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=strip)
        if isinstance(layer, PruneLowMagnitude):
            layer.apply_masks()
            return layer.layer
        return layer

    return keras.models.clone_model(model, clone_function=strip)


class UpdatePruningStep(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """Required in ``model.fit`` when training a pruned model (TF-MOT's callback).

    Starts every wrapper's step at 0 (a model restored mid-pruning keeps its step), and
    re-applies the masks at the end of each epoch so that saved weights are sparse.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prunable_layers: list[PruneLowMagnitude] = []
        self._unbuilt: list[PruneLowMagnitude] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.prunable_layers = collect_prunable_layers(self.model)
        if not self.prunable_layers:
            return
        first = self.prunable_layers[0]
        if first.built and first.step == -1:  # -1: new; a restored model keeps its step
            for layer in self.prunable_layers:
                if layer.built:
                    layer.pruning_step.assign(0)
        self._unbuilt = [layer for layer in self.prunable_layers if not layer.built]

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Layers built lazily by the first batch start at step 0 too.
        if self._unbuilt:
            for layer in [layer for layer in self._unbuilt if layer.built]:
                if layer.step == -1:
                    layer.pruning_step.assign(0)
                self._unbuilt.remove(layer)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for layer in self.prunable_layers:
            if layer.built:
                layer.apply_masks()


class PruningSummaries(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
    """TensorBoard scalars of each mask's sparsity and threshold (TF-MOT's callback).

    Written with ``torch.utils.tensorboard`` (package ``tensorboard``, in the ``[keras]``
    extra) to ``log_dir/metrics`` at the start of every epoch and at the end of training,
    stepped by the optimizer's iterations; the epoch's losses and metrics go to
    ``log_dir/train`` as ``epoch_<name>``. View with ``tensorboard --logdir LOG_DIR``.
    """

    def __init__(self, log_dir: str | Path, update_freq: str = "epoch") -> None:
        super().__init__()
        if not isinstance(log_dir, str | Path) or not str(log_dir):
            raise SlimserveError(f"log_dir must be a non-empty path, got {log_dir!r}.")
        if update_freq != "epoch":
            raise SlimserveError("PruningSummaries logs once per epoch: update_freq='epoch'.")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            from slimserve.core.errors import MissingExtraError

            raise MissingExtraError("tensorboard", "keras", "PruningSummaries") from exc
        self.log_dir = Path(log_dir)
        self._metrics = SummaryWriter(str(self.log_dir / "metrics"))
        self._train = SummaryWriter(str(self.log_dir / "train"))

    def _iteration(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        return int(optimizer.iterations.value) if optimizer is not None else 0

    def _log_pruning(self) -> None:
        step = self._iteration()
        for layer in collect_prunable_layers(self.model):
            if not layer.built:
                continue
            for mask, threshold in zip(layer.masks, layer.thresholds, strict=True):
                sparsity = 1.0 - float(mask.value.float().mean())
                self._metrics.add_scalar(f"{mask.path}/sparsity", sparsity, step)
                self._metrics.add_scalar(f"{threshold.path}", float(threshold.value), step)
        self._metrics.flush()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._log_pruning()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for name, value in (logs or {}).items():
            with contextlib.suppress(TypeError, ValueError):
                self._train.add_scalar(f"epoch_{name}", float(value), epoch)
        self._train.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._log_pruning()


@contextlib.contextmanager
def prune_scope() -> Iterator[None]:
    """TF-MOT's scope for loading a pruned (not yet stripped) model. The wrapper is
    registered with Keras when this module is imported, so this only keeps old code
    working: ``with prune_scope(): keras.saving.load_model(path)``."""
    with keras.saving.custom_object_scope({"PruneLowMagnitude": PruneLowMagnitude}):
        yield


def pruned_sparsity(model: Any) -> dict[str, float]:
    """{layer name: fraction of zeros in its prunable weights} for wrapped or stripped
    models (after strip_pruning, the zeros are counted in the weights themselves)."""
    result: dict[str, float] = {}
    for layer in model.layers:
        if isinstance(layer, PruneLowMagnitude):
            result[layer.layer.name] = layer.sparsity()
        elif isinstance(layer, keras.Model):
            result.update(pruned_sparsity(layer))
        else:
            weights = []
            with contextlib.suppress(SlimserveError):  # a layer slimserve cannot prune
                weights = get_prunable_weights(layer)
            if weights:
                total = sum(int(w.value.numel()) for w in weights)
                result[layer.name] = sum(float((w.value == 0).sum()) for w in weights) / total
    return result


__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PruneLowMagnitude",
    "PruningSummaries",
    "UpdatePruningStep",
    "collect_prunable_layers",
    "get_prunable_weights",
    "prune_low_magnitude",
    "prune_scope",
    "pruned_sparsity",
    "strip_pruning",
]
