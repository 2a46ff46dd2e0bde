"""slimserve: prune, quantize, export, measure and serve models.

import slimserve as ss
recipe = ss.load_recipe("recipe.yaml")
result = ss.run_recipe(recipe, "runs/")
"""

import typing as _typing

from slimserve.core.version import __version__

if _typing.TYPE_CHECKING:
    from slimserve.artifact import Artifact, Manifest, load_artifact, save_artifact
    from slimserve.core.context import Context
    from slimserve.core.errors import (
        ArtifactError,
        DataError,
        ExportError,
        MissingExtraError,
        ModelLoadError,
        RecipeError,
        SlimserveError,
    )
    from slimserve.data import Dataset, load_data
    from slimserve.loading import load_model
    from slimserve.loading import load_model as load
    from slimserve.measure.summary import summarize
    from slimserve.models import OnnxModel, TorchModel
    from slimserve.pipeline import run_recipe
    from slimserve.recipe import STEPS, Recipe, load_recipe, parse_recipe
    from slimserve.runtime import Predictor, load_predictor
    from slimserve.stages import RunResult
    from slimserve.techniques.export import ExportConfig, check_parity, export_onnx
    from slimserve.techniques.finetune import FinetuneConfig
    from slimserve.techniques.prune.api import (
        get_pruner,
        prune_low_magnitude,
        strip_pruning,
        update_pruning_step,
    )
    from slimserve.techniques.prune.config import PruneConfig
    from slimserve.techniques.prune.masks import Pruner
    from slimserve.techniques.prune.schedules import ConstantSparsity, PolynomialDecay
    from slimserve.techniques.quantize.api import quantize
    from slimserve.techniques.quantize.configs import (
        CalibrationConfig,
        DynamicQuantizeConfig,
        Fp16QuantizeConfig,
        NncfQuantizeConfig,
        QuantizeConfig,
        StaticQuantizeConfig,
        WeightOnlyQuantizeConfig,
    )
    from slimserve.techniques.quantize.llm import LlmQuantizeConfig
    from slimserve.techniques.quantize.ort import quantize_onnx
    from slimserve.techniques.quantize.qat import QATConfig
    from slimserve.techniques.quantize.torch_dynamic import quantize_dynamic_torch
    from slimserve.techniques.unpad import UnpadConfig

_LAZY = {  # name: (module, attribute), imported on first use (PEP 562)
    "Artifact": ("slimserve.artifact", "Artifact"),
    "Manifest": ("slimserve.artifact", "Manifest"),
    "load_artifact": ("slimserve.artifact", "load_artifact"),
    "save_artifact": ("slimserve.artifact", "save_artifact"),
    "Context": ("slimserve.core.context", "Context"),
    "Dataset": ("slimserve.data", "Dataset"),
    "load_data": ("slimserve.data", "load_data"),
    "ArtifactError": ("slimserve.core.errors", "ArtifactError"),
    "DataError": ("slimserve.core.errors", "DataError"),
    "ExportError": ("slimserve.core.errors", "ExportError"),
    "MissingExtraError": ("slimserve.core.errors", "MissingExtraError"),
    "ModelLoadError": ("slimserve.core.errors", "ModelLoadError"),
    "RecipeError": ("slimserve.core.errors", "RecipeError"),
    "SlimserveError": ("slimserve.core.errors", "SlimserveError"),
    "FinetuneConfig": ("slimserve.techniques.finetune", "FinetuneConfig"),
    "OnnxModel": ("slimserve.models", "OnnxModel"),
    "TorchModel": ("slimserve.models", "TorchModel"),
    "load": ("slimserve.loading", "load_model"),  # the name before load_model
    "load_model": ("slimserve.loading", "load_model"),
    "ExportConfig": ("slimserve.techniques.export", "ExportConfig"),
    "check_parity": ("slimserve.techniques.export", "check_parity"),
    "export_onnx": ("slimserve.techniques.export", "export_onnx"),
    "RunResult": ("slimserve.stages", "RunResult"),
    "run_recipe": ("slimserve.pipeline", "run_recipe"),
    "get_pruner": ("slimserve.techniques.prune.api", "get_pruner"),
    "prune_low_magnitude": ("slimserve.techniques.prune.api", "prune_low_magnitude"),
    "strip_pruning": ("slimserve.techniques.prune.api", "strip_pruning"),
    "update_pruning_step": ("slimserve.techniques.prune.api", "update_pruning_step"),
    "Pruner": ("slimserve.techniques.prune.masks", "Pruner"),
    "ConstantSparsity": ("slimserve.techniques.prune.schedules", "ConstantSparsity"),
    "PolynomialDecay": ("slimserve.techniques.prune.schedules", "PolynomialDecay"),
    "PruneConfig": ("slimserve.techniques.prune.config", "PruneConfig"),
    "CalibrationConfig": ("slimserve.techniques.quantize.configs", "CalibrationConfig"),
    "DynamicQuantizeConfig": ("slimserve.techniques.quantize.configs", "DynamicQuantizeConfig"),
    "Fp16QuantizeConfig": ("slimserve.techniques.quantize.configs", "Fp16QuantizeConfig"),
    "NncfQuantizeConfig": ("slimserve.techniques.quantize.configs", "NncfQuantizeConfig"),
    "QuantizeConfig": ("slimserve.techniques.quantize.configs", "QuantizeConfig"),
    "StaticQuantizeConfig": ("slimserve.techniques.quantize.configs", "StaticQuantizeConfig"),
    "WeightOnlyQuantizeConfig": (
        "slimserve.techniques.quantize.configs",
        "WeightOnlyQuantizeConfig",
    ),
    "quantize": ("slimserve.techniques.quantize.api", "quantize"),
    "quantize_onnx": ("slimserve.techniques.quantize.ort", "quantize_onnx"),
    "QATConfig": ("slimserve.techniques.quantize.qat", "QATConfig"),
    "UnpadConfig": ("slimserve.techniques.unpad", "UnpadConfig"),
    "quantize_dynamic_torch": (
        "slimserve.techniques.quantize.torch_dynamic",
        "quantize_dynamic_torch",
    ),
    "STEPS": ("slimserve.recipe", "STEPS"),
    "Recipe": ("slimserve.recipe", "Recipe"),
    "load_recipe": ("slimserve.recipe", "load_recipe"),
    "parse_recipe": ("slimserve.recipe", "parse_recipe"),
    "Predictor": ("slimserve.runtime", "Predictor"),
    "load_predictor": ("slimserve.runtime", "load_predictor"),
    "GenerationParams": ("slimserve.runtime.generation", "GenerationParams"),
    "Generator": ("slimserve.runtime.generation", "Generator"),
    "load_generator": ("slimserve.runtime.generation", "load_generator"),
    "LlmQuantizeConfig": ("slimserve.techniques.quantize.llm", "LlmQuantizeConfig"),
    "summarize": ("slimserve.measure.summary", "summarize"),
}


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


__all__ = [
    "STEPS",
    "Artifact",
    "ArtifactError",
    "CalibrationConfig",
    "ConstantSparsity",
    "Context",
    "DataError",
    "Dataset",
    "DynamicQuantizeConfig",
    "ExportConfig",
    "ExportError",
    "FinetuneConfig",
    "Fp16QuantizeConfig",
    "GenerationParams",
    "Generator",
    "LlmQuantizeConfig",
    "Manifest",
    "MissingExtraError",
    "ModelLoadError",
    "NncfQuantizeConfig",
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
    "StaticQuantizeConfig",
    "TorchModel",
    "UnpadConfig",
    "WeightOnlyQuantizeConfig",
    "__version__",
    "check_parity",
    "export_onnx",
    "get_pruner",
    "load",
    "load_artifact",
    "load_data",
    "load_generator",
    "load_model",
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
