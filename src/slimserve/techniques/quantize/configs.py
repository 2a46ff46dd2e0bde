"""The quantize step: one frozen config per mode, so a field exists only where it means
something. ``QuantizeConfig`` is their union, told apart by ``mode`` (``dynamic`` when a
recipe leaves it out). ONNX Runtime's quantizer does the work (``quantize.ort``)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from slimserve.core.context import Context
from slimserve.core.errors import RecipeError
from slimserve.core.specs import tag_of
from slimserve.models.onnx import OnnxModel
from slimserve.techniques.quantize.llm import LlmQuantizeConfig
from slimserve.techniques.quantize.ort import MIN_CALIBRATION_SAMPLES, quantize_onnx

Weights = Annotated[
    Literal["int8", "uint8"],
    Field(description="Weight type. uint8 weights fall onto slow U8U8 kernels on x86."),
]
PerChannel = Annotated[bool, Field(description="One scale per output channel of each weight.")]
ReduceRange = Annotated[bool, Field(description="7-bit weights, for CPUs without VNNI.")]
OpTypes = Annotated[
    tuple[str, ...] | None,
    Field(description="Operator types to quantize (default: all ORT supports)."),
]
Exclude = Annotated[
    tuple[str, ...],
    Field(
        description="Kept in float: ONNX node names, or PyTorch module names (fc1) as pruning "
        "takes them, meaning every node exported from that module."
    ),
]
Preprocess = Annotated[bool, Field(description="Shape inference + graph optimization first.")]
Fallback = Annotated[
    Literal["none", "auto"],
    Field(
        description="auto: keep the fewest most quantization-sensitive nodes in float so "
        "that the recipe's goal is met (needs eval data)."
    ),
]
FROZEN = ConfigDict(extra="forbid", frozen=True)


def _own_keys_only(cls: type[BaseModel], data: Any) -> Any:
    """Refuse another mode's option by name. One at its default is dropped: a resolved
    recipe of an earlier version (one config for all modes) spells every option out."""
    if not isinstance(data, dict):
        return data
    mode = cls.model_fields["mode"].default
    kept = {}
    for key, value in data.items():
        owners = [m for m, c in MODES.items() if key in c.model_fields]
        if key in cls.model_fields or not owners:
            kept[key] = value  # an unknown key is refused by extra="forbid", listing keys
            continue
        default = MODES[owners[0]].model_fields[key].get_default(call_default_factory=True)
        if value != (default.model_dump() if isinstance(default, BaseModel) else default):
            raise ValueError(f"'{key}' applies to mode {' or '.join(owners)}, not {mode}")
    return kept


class CalibrationConfig(BaseModel):
    """How static quantization estimates activation ranges."""

    model_config = FROZEN

    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="ORT calibrator: MinMax, Entropy or Percentile."
    )
    percentile: float = Field(
        99.999, gt=90, le=100, description="Percentile kept by the percentile method."
    )
    samples: int = Field(
        256, ge=MIN_CALIBRATION_SAMPLES, description="Calibration samples to use (at most)."
    )
    batch_size: int = Field(32, ge=1, description="Samples per calibration batch.")


class DynamicQuantizeConfig(BaseModel):
    """int8 weights; activations quantized at run time (ORT's dynamic quantizer)."""

    model_config = FROZEN
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False
    _own_keys = model_validator(mode="before")(_own_keys_only)

    mode: Literal["dynamic"] = "dynamic"
    weights: Weights = "int8"
    activation_scales: Literal["tensor", "token"] = Field(
        "tensor",
        description="One activation scale per MatMul input (ORT) or one per token/row "
        "(MatMuls run as MatMulIntegerToFloat, fused Attention keeps float activations "
        "with int8 weights); token is several times more accurate on transformers at a "
        "little speed.",
    )
    per_channel: PerChannel = True
    reduce_range: ReduceRange = False
    op_types: OpTypes = None
    exclude: Exclude = ()
    preprocess: Preprocess = True
    fallback: Fallback = "none"

    @model_validator(mode="after")
    def _token_scales(self) -> DynamicQuantizeConfig:
        if self.activation_scales == "token" and (self.weights != "int8" or self.reduce_range):
            raise ValueError(
                "activation_scales: token uses full-range int8 weights; remove "
                "weights: uint8 and reduce_range"
            )
        return self

    def describe(self) -> str:
        """A short label for tables."""
        scales = " per-token" if self.activation_scales == "token" else ""
        return f"quantize dynamic {self.weights}{scales}"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        return _apply(self, model, ctx)


class StaticQuantizeConfig(BaseModel):
    """int8 weights and activations, ranges calibrated on data (ORT's QDQ format)."""

    model_config = FROZEN
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False
    _own_keys = model_validator(mode="before")(_own_keys_only)

    mode: Literal["static"] = "static"
    weights: Weights = "int8"
    activations: Literal["int8", "uint8"] = Field(
        "uint8", description="Activation type (ORT advises uint8 on x86)."
    )
    per_channel: PerChannel = True
    reduce_range: ReduceRange = False
    symmetric_activations: bool = Field(False, description="Zero point 0.")
    op_types: OpTypes = None
    exclude: Exclude = ()
    preprocess: Preprocess = True
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Calibration settings."
    )
    fallback: Fallback = "none"
    smooth_quant_alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="SmoothQuant before calibrating (NNCF's, extra [openvino]): each "
        "MatMul's activation outliers move into its weights by per-channel scales, "
        "alpha = how much (0.5 is SmoothQuant's default); outputs in float are unchanged. "
        "None: off.",
    )

    def describe(self) -> str:
        """A short label for tables."""
        smooth = "" if self.smooth_quant_alpha is None else " smoothquant"
        return f"quantize static {self.weights}{smooth}"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        return _apply(self, model, ctx)


class WeightOnlyQuantizeConfig(BaseModel):
    """Block-wise 4- or 8-bit MatMul weights (ORT's MatMulNBits); activations stay float."""

    model_config = FROZEN
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False
    _own_keys = model_validator(mode="before")(_own_keys_only)

    mode: Literal["weight_only"] = "weight_only"
    bits: Literal[4, 8] = Field(4, description="Bits per weight.")
    block_size: int = Field(128, ge=16, description="Weights per scale (a power of two, >= 16).")
    symmetric_weights: bool = Field(True, description="Zero point 0.")
    accuracy_level: int | None = Field(
        None, ge=0, le=4, description="MatMulNBits compute type (4 = int8)."
    )
    exclude: Exclude = ()

    @model_validator(mode="after")
    def _power_of_two(self) -> WeightOnlyQuantizeConfig:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        return self

    def describe(self) -> str:
        """A short label for tables."""
        return f"quantize int{self.bits} weight-only"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        return _apply(self, model, ctx)


class Fp16QuantizeConfig(BaseModel):
    """The graph converted to half precision (ORT's float16 converter)."""

    model_config = FROZEN
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False
    _own_keys = model_validator(mode="before")(_own_keys_only)

    mode: Literal["fp16"] = "fp16"
    keep_io_types: bool = Field(True, description="Keep the model's inputs and outputs in fp32.")
    exclude: Exclude = ()

    def describe(self) -> str:
        """A short label for tables."""
        return "convert fp16"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        return _apply(self, model, ctx)


class NncfQuantizeConfig(BaseModel):
    """Static int8 by NNCF (extra [openvino]): QDQ ONNX for ONNX Runtime and OpenVINO."""

    model_config = FROZEN
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str] = "onnx"
    trains: ClassVar[bool] = False
    _own_keys = model_validator(mode="before")(_own_keys_only)

    mode: Literal["nncf"] = "nncf"
    model_type: Literal["transformer", "default"] = Field(
        "transformer",
        description="transformer: NNCF's transformer scheme (softmax and norms kept in "
        "float, SmoothQuant on MatMuls); default: every supported op.",
    )
    preset: Literal["performance", "mixed"] = Field(
        "performance",
        description="performance: symmetric weights and activations; mixed: asymmetric "
        "activations.",
    )
    subset_size: int = Field(300, ge=1, description="Calibration samples used (at most).")
    fast_bias_correction: bool = Field(True, description="Correct biases shifted by int8.")
    smooth_quant_alpha: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="SmoothQuant migration strength for MatMuls (None: NNCF's default for "
        "the model type; -1 turns it off).",
    )
    exclude: Exclude = ()

    def describe(self) -> str:
        """A short label for tables."""
        return "quantize nncf int8"

    def apply(self, model: OnnxModel, ctx: Context) -> OnnxModel:
        from slimserve.techniques.quantize.nncf import quantize_nncf

        data = ctx.split("calibration", "train")
        if data is None:
            raise RecipeError(
                "quantize mode nncf calibrates on data: add data.calibration (or "
                "data.train) to the recipe."
            )
        return quantize_nncf(model, self, data)


MODES: dict[str, type[BaseModel]] = {
    "dynamic": DynamicQuantizeConfig,
    "static": StaticQuantizeConfig,
    "weight_only": WeightOnlyQuantizeConfig,
    "fp16": Fp16QuantizeConfig,
    "nncf": NncfQuantizeConfig,
    "llm": LlmQuantizeConfig,
}
"""``mode`` -> its config: what the union below is made of."""


mode_of = tag_of("mode", "dynamic")
"""The union's discriminator: the ``mode`` key, ``dynamic`` when left out."""


QuantizeConfig = Annotated[
    Annotated[DynamicQuantizeConfig, Tag("dynamic")]
    | Annotated[StaticQuantizeConfig, Tag("static")]
    | Annotated[WeightOnlyQuantizeConfig, Tag("weight_only")]
    | Annotated[Fp16QuantizeConfig, Tag("fp16")]
    | Annotated[NncfQuantizeConfig, Tag("nncf")]
    | Annotated[LlmQuantizeConfig, Tag("llm")],
    Discriminator(mode_of),
]
"""The quantize step: one of the mode configs, picked by ``mode``."""

OrtQuantizeConfig = (
    DynamicQuantizeConfig | StaticQuantizeConfig | WeightOnlyQuantizeConfig | Fp16QuantizeConfig
)
"""The modes ONNX Runtime's quantizer does (``quantize.ort``)."""
AnyQuantizeConfig = OrtQuantizeConfig | NncfQuantizeConfig
IntegerQuantizeConfig = DynamicQuantizeConfig | StaticQuantizeConfig
"""The modes that quantize activations to int8 (and so can fall back node by node)."""


def _apply(config: OrtQuantizeConfig, model: OnnxModel, ctx: Context) -> OnnxModel:
    if getattr(config, "fallback", "none") == "auto":
        from slimserve.techniques.quantize.sensitivity import quantize_with_fallback

        assert isinstance(config, IntegerQuantizeConfig)
        return quantize_with_fallback(model, config, ctx)
    calibration = ctx.split("calibration", "train") if config.mode == "static" else None
    return quantize_onnx(model, config, calibration, ctx.work_dir)
