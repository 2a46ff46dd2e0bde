"""TF Model Optimization's Keras pruning API for Keras 3, where users import it:
``import slimserve.keras as sparsity`` (was ``tfmot.sparsity.keras``). The code lives in
``slimserve.techniques.prune.keras``; this module is its public name."""

from slimserve.techniques.prune.keras import (
    ConstantSparsity,
    PolynomialDecay,
    PruneLowMagnitude,
    PruningSummaries,
    UpdatePruningStep,
    collect_prunable_layers,
    get_prunable_weights,
    prune_low_magnitude,
    prune_scope,
    pruned_sparsity,
    strip_pruning,
)

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
