"""slimserve: prune, quantize, export, measure and serve models.

import slimserve as ss
recipe = ss.load_recipe("recipe.yaml")
result = ss.run_recipe(recipe, "runs/")
"""

import typing as _typing

if _typing.TYPE_CHECKING:
    from slimserve.artifact import Artifact, Manifest, load_artifact, save_artifact
    from slimserve.context import Context
    from slimserve.data import Dataset, load_data
    from slimserve.errors import (
        ArtifactError,
        DataError,
        ExportError,
        MissingExtraError,
        ModelLoadError,
        RecipeError,
        SlimserveError,
    )
    from slimserve.finetune import FinetuneConfig
    from slimserve.models import OnnxModel, TorchModel, load
    from slimserve.models.export import ExportConfig, check_parity, export_onnx
    from slimserve.pipeline import RunResult, run_recipe
    from slimserve.prune.api import (
        get_pruner,
        prune_low_magnitude,
        strip_pruning,
        update_pruning_step,
    )
    from slimserve.prune.masks import Pruner
    from slimserve.prune.schedules import ConstantSparsity, PolynomialDecay
    from slimserve.prune.train import PruneConfig
    from slimserve.quantize.ort import CalibrationConfig, QuantizeConfig, quantize, quantize_onnx
    from slimserve.quantize.qat import QATConfig
    from slimserve.quantize.torch_dynamic import quantize_dynamic_torch
    from slimserve.recipe import STEPS, Recipe, load_recipe, parse_recipe
    from slimserve.runtime import Predictor
    from slimserve.runtime import load as load_predictor
    from slimserve.summary import summarize

_LAZY = {  # name: (module, attribute), imported on first use (PEP 562)
    "Artifact": ("slimserve.artifact", "Artifact"),
    "Manifest": ("slimserve.artifact", "Manifest"),
    "load_artifact": ("slimserve.artifact", "load_artifact"),
    "save_artifact": ("slimserve.artifact", "save_artifact"),
    "Context": ("slimserve.context", "Context"),
    "Dataset": ("slimserve.data", "Dataset"),
    "load_data": ("slimserve.data", "load_data"),
    "ArtifactError": ("slimserve.errors", "ArtifactError"),
    "DataError": ("slimserve.errors", "DataError"),
    "ExportError": ("slimserve.errors", "ExportError"),
    "MissingExtraError": ("slimserve.errors", "MissingExtraError"),
    "ModelLoadError": ("slimserve.errors", "ModelLoadError"),
    "RecipeError": ("slimserve.errors", "RecipeError"),
    "SlimserveError": ("slimserve.errors", "SlimserveError"),
    "FinetuneConfig": ("slimserve.finetune", "FinetuneConfig"),
    "OnnxModel": ("slimserve.models", "OnnxModel"),
    "TorchModel": ("slimserve.models", "TorchModel"),
    "load": ("slimserve.models", "load"),
    "ExportConfig": ("slimserve.models.export", "ExportConfig"),
    "check_parity": ("slimserve.models.export", "check_parity"),
    "export_onnx": ("slimserve.models.export", "export_onnx"),
    "RunResult": ("slimserve.pipeline", "RunResult"),
    "run_recipe": ("slimserve.pipeline", "run_recipe"),
    "get_pruner": ("slimserve.prune.api", "get_pruner"),
    "prune_low_magnitude": ("slimserve.prune.api", "prune_low_magnitude"),
    "strip_pruning": ("slimserve.prune.api", "strip_pruning"),
    "update_pruning_step": ("slimserve.prune.api", "update_pruning_step"),
    "Pruner": ("slimserve.prune.masks", "Pruner"),
    "ConstantSparsity": ("slimserve.prune.schedules", "ConstantSparsity"),
    "PolynomialDecay": ("slimserve.prune.schedules", "PolynomialDecay"),
    "PruneConfig": ("slimserve.prune.train", "PruneConfig"),
    "CalibrationConfig": ("slimserve.quantize.ort", "CalibrationConfig"),
    "QuantizeConfig": ("slimserve.quantize.ort", "QuantizeConfig"),
    "quantize": ("slimserve.quantize.ort", "quantize"),
    "quantize_onnx": ("slimserve.quantize.ort", "quantize_onnx"),
    "QATConfig": ("slimserve.quantize.qat", "QATConfig"),
    "quantize_dynamic_torch": ("slimserve.quantize.torch_dynamic", "quantize_dynamic_torch"),
    "STEPS": ("slimserve.recipe", "STEPS"),
    "Recipe": ("slimserve.recipe", "Recipe"),
    "load_recipe": ("slimserve.recipe", "load_recipe"),
    "parse_recipe": ("slimserve.recipe", "parse_recipe"),
    "Predictor": ("slimserve.runtime", "Predictor"),
    "load_predictor": ("slimserve.runtime", "load"),
    "summarize": ("slimserve.summary", "summarize"),
}


# ``quantize`` is also the name of a subpackage, which Python sets on this module once
# imported, so it cannot be lazy; slimserve.quantize.ort imports no torch at its top.
from slimserve.quantize.ort import quantize  # noqa: E402

del _LAZY["quantize"]


def __getattr__(name: str) -> _typing.Any:
    # Nothing is imported until used: `slimserve serve model.onnx` and `slimserve
    # loadtest` never load torch (~2 s and ~200,000 objects at import).
    if name not in _LAZY:
        raise AttributeError(f"module 'slimserve' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "STEPS",
    "Artifact",
    "ArtifactError",
    "CalibrationConfig",
    "ConstantSparsity",
    "Context",
    "DataError",
    "Dataset",
    "ExportConfig",
    "ExportError",
    "FinetuneConfig",
    "Manifest",
    "MissingExtraError",
    "ModelLoadError",
    "OnnxModel",
    "PolynomialDecay",
    "Predictor",
    "PruneConfig",
    "Pruner",
    "QATConfig",
    "QuantizeConfig",
    "Recipe",
    "RecipeError",
    "RunResult",
    "SlimserveError",
    "TorchModel",
    "__version__",
    "check_parity",
    "export_onnx",
    "get_pruner",
    "load",
    "load_artifact",
    "load_data",
    "load_predictor",
    "load_recipe",
    "parse_recipe",
    "prune_low_magnitude",
    "quantize",
    "quantize_dynamic_torch",
    "quantize_onnx",
    "run_recipe",
    "save_artifact",
    "strip_pruning",
    "summarize",
    "update_pruning_step",
]
