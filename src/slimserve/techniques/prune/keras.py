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
so, so after N batches the step is N. That is TF-MOT's own order (``PruneLowMagnitude.call``
adds one to ``pruning_step`` before ``conditional_mask_update`` reads it; its callback test
fits 3 batches and expects step 3): the first batch is step 1, a ``begin_step=0`` schedule
first fires at step ``frequency``, and ``end_step`` itself is an update step. A fit in which
the schedule never fires leaves the weights dense; ``UpdatePruningStep`` warns about it
(``PruningScheduleWarning``) instead of staying silent.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from slimserve.core.errors import SlimserveError
from slimserve.models.keras import check_keras3, import_keras
from slimserve.techniques.prune.keras_layers import PruneLowMagnitude, get_prunable_weights
from slimserve.techniques.prune.schedules import ConstantSparsity, PolynomialDecay, Schedule

keras = import_keras("slimserve.keras")


class PruningScheduleWarning(UserWarning):
    """A fit ended without its pruning schedule updating any mask."""


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
        self._first_step = 0

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
        self._first_step = max(first.step, 0) + 1 if first.built else 1
        for layer in self.prunable_layers:
            layer.mask_updates = 0

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

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        built = [layer for layer in self.prunable_layers if layer.built]
        if not built or any(layer.mask_updates for layer in built):
            return
        last = built[0].step
        if last < self._first_step:
            return  # no training batch ran
        schedule = built[0].pruning_schedule
        settings = ", ".join(f"{k}={v}" for k, v in schedule.model_dump().items())
        warnings.warn(
            f"The pruning schedule never fired during this fit (steps {self._first_step}-"
            f"{last}), so no weight was pruned: {type(schedule).__name__}({settings}) updates "
            "the masks at begin_step + k * frequency up to end_step, and the first batch is "
            "step 1 (as in TF-MOT). Lower frequency, or train for more steps.",
            PruningScheduleWarning,
            stacklevel=2,
        )


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
    "PruningScheduleWarning",
    "PruningSummaries",
    "UpdatePruningStep",
    "collect_prunable_layers",
    "get_prunable_weights",
    "prune_low_magnitude",
    "prune_scope",
    "pruned_sparsity",
    "strip_pruning",
]
