"""Structured pruning of a decoder LM (``prune: {granularity: depth | width}``): whole
decoder blocks, or MLP channels and query heads, chosen by what they do to calibration
text and physically removed, so the model is smaller and decodes faster in every runtime.
Distillation from the unpruned model (the ``distill`` step) then recovers what was lost;
quantization comes last. The measuring and cutting is ``llm_surgery.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from slimserve.core.errors import RecipeError
from slimserve.techniques.prune.config import PruneConfig

if TYPE_CHECKING:
    from slimserve.core.context import Context
    from slimserve.models.torch import TorchModel


class DepthPruneConfig(BaseModel):
    """Remove whole decoder blocks of a decoder LM, the ones that change their input
    least on calibration text."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "prune"
    accepts: ClassVar[tuple[str, ...]] = ("causal_lm",)
    produces: ClassVar[str] = "causal_lm"
    trains: ClassVar[bool] = False
    uses_calibration: ClassVar[bool] = True

    granularity: Literal["depth"] = Field(
        "depth", description="Whole decoder blocks of a decoder LM (not a torch model's masks)."
    )
    layers: int | None = Field(
        None, ge=0, description="How many decoder blocks to remove (or give `speedup`)."
    )
    speedup: float | None = Field(
        None,
        gt=1.0,
        description="Remove the fewest blocks that cut the weights a decoded token reads by "
        "this factor (an estimate: decode on a CPU is bound by reading weights; the report "
        "measures the real one).",
    )
    importance: Literal["block_influence", "angular"] = Field(
        "block_influence",
        description="block_influence: the blocks whose output is closest to their input "
        "(1 - cosine, ShortGPT), anywhere; angular: the run of consecutive blocks whose "
        "input and output are closest in angle (Gromov et al.).",
    )
    calibration_samples: int = Field(
        32, ge=1, description="Windows of 128 tokens of calibration text measured."
    )

    @model_validator(mode="after")
    def _one_target(self) -> DepthPruneConfig:
        if (self.layers is None) == (self.speedup is None):
            raise ValueError("give exactly one of 'layers' (a count) and 'speedup'")
        return self

    def describe(self) -> str:
        target = f"{self.layers} blocks" if self.layers is not None else f"{self.speedup:g}x"
        return f"prune depth {target} ({self.importance})"

    def apply(self, model: TorchModel, ctx: Context) -> TorchModel:
        from slimserve.techniques.prune import llm_surgery as surgery

        hf_model, batches = _measured(model, ctx, self.calibration_samples)
        layers = len(surgery.decoder_layers(hf_model))
        count = self.layers if self.layers is not None else _blocks_for(hf_model, self.speedup)
        if count >= layers:
            raise RecipeError(
                f"prune.layers {count}: the model has {layers} decoder blocks; remove fewer "
                f"(at most {layers - 1})."
            )
        similarity = surgery.block_similarity(hf_model, batches)
        drop = surgery.layers_to_drop(similarity, count, self.importance)
        influence = 1.0 - similarity.diagonal(1)
        pruned = surgery.without_layers(hf_model, drop)
        ctx.log.details["block_influence"] = [round(float(v), 5) for v in influence]
        ctx.log.details["dropped_layers"] = drop
        ctx.log.notes.append(
            f"Depth pruning removed {count} of {layers} decoder blocks ({drop or 'none'}, by "
            f"{self.importance} on {sum(len(b) for b in batches)} calibration windows): "
            f"{_weights_line(hf_model, pruned)}. Block influence (1 - cos, input vs output) "
            f"per block: {', '.join(f'{v:.3f}' for v in influence)}."
        )
        return _wrapped(model, pruned)


class WidthPruneConfig(BaseModel):
    """Remove MLP channels and query heads from every decoder block of a decoder LM, the
    ones that add least to the residual stream on calibration text."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "prune"
    accepts: ClassVar[tuple[str, ...]] = ("causal_lm",)
    produces: ClassVar[str] = "causal_lm"
    trains: ClassVar[bool] = False
    uses_calibration: ClassVar[bool] = True

    granularity: Literal["width"] = Field(
        "width", description="MLP channels and query heads of a decoder LM's every block."
    )
    mlp: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of each block's MLP channels removed."
    )
    heads: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the query heads removed within each grouped KV head (rounded "
        "down to whole heads; K/V heads are kept, so the KV cache keeps its size).",
    )
    round_to: int = Field(
        64,
        ge=1,
        description="The kept MLP width is a multiple of this (int4 groups and the CPU's "
        "kernels want widths in multiples of 32 or 64).",
    )
    calibration_samples: int = Field(
        32, ge=1, description="Windows of 128 tokens of calibration text measured."
    )

    def describe(self) -> str:
        return f"prune width mlp {self.mlp:.0%} heads {self.heads:.0%}"

    def apply(self, model: TorchModel, ctx: Context) -> TorchModel:
        from slimserve.techniques.prune import llm_surgery as surgery

        hf_model, batches = _measured(model, ctx, self.calibration_samples)
        config = hf_model.config
        inter, heads, kv = (
            int(config.intermediate_size),
            int(config.num_attention_heads),
            int(config.num_key_value_heads),
        )
        keep_channels = inter - _removed_channels(inter, self.mlp, self.round_to)
        group = heads // kv
        keep_per_group = group - int(group * self.heads + 1e-9)  # heads < 1: at least one
        scores = surgery.width_scores(hf_model, batches)
        channels = [surgery.kept_channels(s, keep_channels) for s in scores.channels]
        kept = [surgery.kept_heads(s, kv, keep_per_group) for s in scores.heads]
        pruned = surgery.narrower(hf_model, channels, kept)
        ctx.log.details["width"] = {
            "intermediate": [inter, keep_channels],
            "query_heads": [heads, keep_per_group * kv],
        }
        ctx.log.notes.append(
            f"Width pruning kept {keep_channels} of {inter} MLP channels and "
            f"{keep_per_group * kv} of {heads} query heads ({kv} KV heads kept) in every "
            f"block, by their contribution to the residual on "
            f"{sum(len(b) for b in batches)} calibration windows: "
            f"{_weights_line(hf_model, pruned)}."
        )
        return _wrapped(model, pruned)


def granularity_of(value: Any) -> str:
    """The prune union's discriminator: ``depth`` and ``width`` (decoder LMs) have configs
    of their own; every other granularity is the torch model's ``PruneConfig``."""
    granularity = (
        value.get("granularity") if isinstance(value, dict) else getattr(value, "granularity", "")
    )
    return str(granularity) if granularity in ("depth", "width") else "torch"


PruneStepConfig = Annotated[
    Annotated[PruneConfig, Tag("torch")]
    | Annotated[DepthPruneConfig, Tag("depth")]
    | Annotated[WidthPruneConfig, Tag("width")],
    Discriminator(granularity_of),
]
"""The prune step: a torch model's masks and channels, or a decoder LM's blocks or width."""


def _removed_channels(width: int, share: float, round_to: int) -> int:
    """How many channels go: the kept width rounded to ``round_to`` (at least one unit)."""
    if share == 0:
        return 0
    unit = round_to if round_to < width else 1
    keep = max(unit, round(width * (1 - share) / unit) * unit)
    return width - keep


def _blocks_for(hf_model: Any, speedup: float | None) -> int:
    """The fewest blocks whose removal cuts the decoded weights by ``speedup``."""
    from slimserve.techniques.prune import llm_surgery as surgery

    assert speedup is not None
    layers = surgery.decoder_layers(hf_model)
    total = surgery.decoded_weights(hf_model)
    per_block = sum(int(p.numel()) for p in layers[0].parameters())
    for count in range(1, len(layers)):
        if total / (total - count * per_block) >= speedup:
            return count
    raise RecipeError(
        f"prune.speedup {speedup:g} is out of reach by removing blocks: even {len(layers) - 1} "
        "of them leave the head's weights to read. Ask for less."
    )


def _measured(model: TorchModel, ctx: Context, samples: int) -> tuple[Any, list[Any]]:
    """The causal LM inside ``model`` and its calibration batches."""
    from slimserve.models.hf import load_tokenizer
    from slimserve.techniques.prune.llm_surgery import calibration_batches

    hf_model = getattr(model.module, "model", None)
    if model.task != "text-generation" or hf_model is None or model.hf_folder is None:
        raise RecipeError("Depth and width pruning take a decoder LM ({hf: DIR} or {gguf: FILE}).")
    if not ctx.calibration_text:
        raise RecipeError(
            "Depth and width pruning measure the model on calibration text: give "
            "data.calibration ({example: english, split: calibration} by default)."
        )
    tokens = list(load_tokenizer(model.hf_folder)(ctx.calibration_text)["input_ids"])
    return hf_model, calibration_batches(tokens, samples)


def _wrapped(model: TorchModel, pruned: Any) -> TorchModel:
    from slimserve.models.causal_lm import NextTokenLogits

    return model.with_module(NextTokenLogits(pruned).eval())


def _weights_line(before: Any, after: Any) -> str:
    from slimserve.techniques.prune.llm_surgery import decoded_weights, weight_count

    old, new = weight_count(before), weight_count(after)
    read_old, read_new = decoded_weights(before), decoded_weights(after)
    return (
        f"{old / 1e6:.1f} M -> {new / 1e6:.1f} M weights ({1 - new / old:.1%} fewer), "
        f"{read_old / 1e6:.1f} M -> {read_new / 1e6:.1f} M read per decoded token "
        f"({read_old / read_new:.2f}x fewer)"
    )
