"""slimserve: prune, quantize, export, measure and serve models.

import slimserve as ss
recipe = ss.load_recipe("recipe.yaml")
result = ss.run_recipe(recipe, "runs/")
"""

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
