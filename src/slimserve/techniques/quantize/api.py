"""``ss.quantize``: quantize a model from Python in one call (a torch model is exported
to ONNX first)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimserve.core.context import Context
from slimserve.core.errors import RecipeError
from slimserve.models.onnx import OnnxModel
from slimserve.techniques.quantize.configs import DynamicQuantizeConfig
from slimserve.techniques.quantize.ort import quantize_onnx

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.techniques.quantize.configs import AnyQuantizeConfig


def quantize(
    model: Any,
    config: AnyQuantizeConfig | None = None,
    calibration: Dataset | None = None,
) -> OnnxModel:
    """Quantize a model (a TorchModel is exported to ONNX first) with ``config``
    (default: dynamic int8). Static and nncf modes need ``calibration`` data."""
    from slimserve.models.torch import TorchModel
    from slimserve.techniques.export import ExportConfig

    config = config or DynamicQuantizeConfig()
    if isinstance(model, TorchModel):
        model = ExportConfig().apply(model, Context())
    if not isinstance(model, OnnxModel):
        raise RecipeError(
            f"quantize takes a TorchModel or OnnxModel, got {type(model).__name__}; "
            "load it with slimserve.load_model first."
        )
    if config.mode == "nncf":
        if calibration is None:
            raise RecipeError("quantize mode nncf needs calibration data (calibration=...).")
        from slimserve.techniques.quantize.nncf import quantize_nncf

        return quantize_nncf(model, config, calibration)
    return quantize_onnx(model, config, calibration)
