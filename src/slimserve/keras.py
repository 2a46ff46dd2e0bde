"""TF Model Optimization's Keras pruning API for Keras 3, where users import it:
``import slimserve.keras as sparsity`` (was ``tfmot.sparsity.keras``). The code lives in
``slimserve.techniques.prune.keras``; this module is its public name."""

from slimserve.techniques.prune.keras import *  # noqa: F403
from slimserve.techniques.prune.keras import __all__ as __all__
