"""Weight-only quantization of a decoder LM (``quantize: {mode: llm}``): the causal LM is
built into an onnxruntime-genai folder by onnxruntime-genai's model builder, its MatMul
weights in int4 or int8 group-wise (ONNX Runtime's MatMulNBits: a float scale per group,
zero points when asymmetric), round-to-nearest or k-quant, with the head's precision and
llama.cpp's mixed strategy (the most sensitive layers in int8) as knobs.

What the builder does is not rewritten here: this config names its options, checks what
would fail inside it (a group size that does not divide a layer's width), and runs it in
a child process (its memory is given back when it ends).
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimserve.core.errors import ExportError, RecipeError, require
from slimserve.models.llm import LlmModel

if TYPE_CHECKING:
    from slimserve.core.context import Context
    from slimserve.models.torch import TorchModel

GROUP_SIZES = (16, 32, 64, 128, 256)


class LlmQuantizeConfig(BaseModel):
    """A decoder LM's weights in int4/int8 groups (or float32), built for
    onnxruntime-genai."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "quantize"
    accepts: ClassVar[tuple[str, ...]] = ("causal_lm",)
    produces: ClassVar[str] = "llm"
    trains: ClassVar[bool] = False

    mode: Literal["llm"] = "llm"
    weights: Literal["int4", "int8", "fp32", "gguf"] = Field(
        "int4",
        description="Weight precision of every MatMul (fp32: no quantization; gguf: the "
        "source GGUF's own Q4_0 / Q4_1 / Q8_0 blocks, re-expressed exactly, not quantized "
        "again).",
    )
    group_size: int = Field(
        32,
        description="Weights per scale (16, 32, 64, 128, 256): must divide every layer's "
        "input width (SmolLM2's 576 takes 16, 32 or 64).",
    )
    symmetric: bool = Field(
        True, description="Symmetric groups (no zero point); false: a zero point per group."
    )
    method: Literal["rtn", "k_quant"] = Field(
        "rtn",
        description="rtn: round to nearest; k_quant: llama.cpp's k-quant search for each "
        "group's scale (and zero point).",
    )
    head: Literal["same", "int8", "float"] = Field(
        "same",
        description="The LM head (the last MatMul, the largest and most output-sensitive "
        "weight; tied to the embedding in SmolLM2): as the body, int8, or float32.",
    )
    sensitive_layers: Literal["same", "int8"] = Field(
        "same",
        description="int8: llama.cpp's mixed strategy, the most quantization-sensitive "
        "MatMuls (first and last eighth of the layers, every third layer's qkv/v/down "
        "projections) in int8, the rest in the body's precision.",
    )
    awq: bool = Field(
        False,
        description="AWQ (NNCF): per-input-channel scales, from calibration text's "
        "activations, that shield the weights the largest activations multiply; int4.",
    )
    scale_estimation: bool = Field(
        False,
        description="Scale estimation (NNCF): each group's scale chosen to minimise the "
        "layer's output error on calibration text, not its weights' error; int4.",
    )
    int4_share: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Share of the body's weights in int4 (NNCF's ratio); the rest in int8, "
        "the layers chosen by `sensitivity` on calibration text.",
    )
    sensitivity: Literal[
        "weight_error", "hessian", "activation_variance", "activation_magnitude"
    ] = Field(
        "hessian",
        description="How int4_share ranks layers (NNCF's sensitivity metrics): the int4 "
        "weights' error alone, or weighted by the calibration activations' Hessian, "
        "variance or magnitude.",
    )
    calibration_samples: int = Field(
        32,
        ge=1,
        description="Windows of 128 tokens of calibration text that awq, scale_estimation "
        "and int4_share learn from (data.calibration; Python's documentation by default).",
    )
    activations: Literal["int8", "float"] = Field(
        "int8",
        description="What the quantized MatMuls compute in on the CPU: int8 (ONNX Runtime's "
        "accuracy_level 4, fastest) or float32 (accuracy_level 1).",
    )

    @model_validator(mode="after")
    def _one_way_to_int4(self) -> LlmQuantizeConfig:
        changed = {"head": "same", "sensitive_layers": "same", "method": "rtn"}
        if self.weights == "gguf" and any(getattr(self, k) != v for k, v in changed.items()):
            raise ValueError(
                "weights: gguf keeps the file's own blocks for every layer: drop head, "
                "sensitive_layers and method (or use weights: int4 or int8)."
            )
        if not self.uses_nncf:
            return self
        if self.weights != "int4":
            raise ValueError(
                "awq, scale_estimation and int4_share shape int4 weights: set weights: int4 "
                f"(not {self.weights}) or drop them."
            )
        if self.method != "rtn" or self.sensitive_layers != "same":
            raise ValueError(
                "awq, scale_estimation and int4_share are NNCF's; method k_quant and "
                "sensitive_layers int8 are the builder's: use one or the other (int4_share "
                "below 1 is the measured way to keep sensitive layers in int8)."
            )
        return self

    @property
    def uses_nncf(self) -> bool:
        """True when NNCF compresses the weights (the builder then only builds float32)."""
        return self.awq or self.scale_estimation or self.int4_share < 1.0

    def describe(self) -> str:
        """A short label for tables: 'quantize llm int4 g32 sym rtn'."""
        if self.weights == "fp32":
            return "build llm fp32"
        if self.weights == "gguf":
            return "import gguf blocks"
        kind = "sym" if self.symmetric else "asym"
        method = (
            "+".join(name for name, on in (("awq", self.awq), ("se", self.scale_estimation)) if on)
            or self.method
        )
        extras = [f"head {self.head}"] if self.head != "same" else []
        if self.sensitive_layers == "int8":
            extras.append("mixed int8")
        if self.int4_share < 1.0:
            extras.append(f"{self.int4_share:.0%} int4 by {self.sensitivity}")
        label = f"quantize llm {self.weights} g{self.group_size} {kind} {method}"
        return label + (f" ({', '.join(extras)})" if extras else "")

    def apply(self, model: TorchModel, ctx: Context) -> LlmModel:
        return build_llm(model, self, ctx.work_dir, ctx.calibration_text)

    def builder_options(self) -> list[str]:
        """onnxruntime-genai's builder: ``-p PRECISION --extra_options KEY=VALUE ...``
        (float32 when NNCF compresses the weights afterwards)."""
        if self.uses_nncf or self.weights == "gguf":
            return ["-p", "fp32"]
        options = [
            f"block_size={self.group_size}",
            f"is_symmetric={str(self.symmetric).lower()}",
            f"algo_config={self.method}",
            f"accuracy_level={4 if self.activations == 'int8' else 1}",
        ]
        mixed = []
        if self.head == "int8":
            mixed.append("last_matmul:int8")
        if self.sensitive_layers == "int8":
            mixed.append("mixed_layers:int8")
        if mixed and self.weights == "int4":
            options.append(f"matmul_mixed_precision={','.join(mixed)}")
        if self.head == "float":
            options.append("nodes_to_exclude=/lm_head/MatMul")
        return ["-p", self.weights, "--extra_options", *options]


def check_group_size(config: LlmQuantizeConfig, hf_config: Any) -> None:
    """A RecipeError naming the group sizes that fit, when ``group_size`` does not divide
    a layer's input width (the builder would fail deep inside, or pad)."""
    if config.weights in ("fp32", "gguf"):
        return
    widths = sorted(
        {
            int(w)
            for w in (
                getattr(hf_config, "hidden_size", None),
                getattr(hf_config, "intermediate_size", None),
            )
            if w
        }
    )
    if config.group_size not in GROUP_SIZES:
        raise RecipeError(
            f"quantize.group_size {config.group_size} is not one of {list(GROUP_SIZES)}."
        )
    bad = [w for w in widths if w % config.group_size]
    if bad:
        fits = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
        raise RecipeError(
            f"quantize.group_size {config.group_size} does not divide the model's width "
            f"{bad[0]} (its layers are {widths} wide): use group_size "
            f"{' or '.join(str(g) for g in fits) or '16'}."
        )


def build_llm(
    model: TorchModel,
    config: LlmQuantizeConfig,
    work_dir: Path,
    calibration_text: str | None = None,
) -> LlmModel:
    """The causal LM (as it is now: pruned or not) saved as a Hugging Face folder, then
    built by onnxruntime-genai's model builder into a folder of its own (and compressed
    by NNCF with ``calibration_text`` when the config asks for its methods)."""
    require("onnxruntime_genai", "llm", "Building a decoder LM for generation")
    hf_model = getattr(model.module, "model", None)
    if model.task != "text-generation" or hf_model is None or model.hf_folder is None:
        raise RecipeError(
            "quantize mode llm takes a decoder LM (a causal LM loaded from {hf: DIR}, "
            "{gguf: FILE} or {example: smollm2})."
        )
    check_group_size(config, hf_model.config)
    root = Path(tempfile.mkdtemp(prefix="slimserve-llm-"))
    atexit.register(shutil.rmtree, root, True)  # the artifact keeps its own copy
    source, output = root / "source", root / "built"
    hf_model.save_pretrained(source)
    from slimserve.models.hf import load_tokenizer

    load_tokenizer(model.hf_folder).save_pretrained(source)
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(source),
        "-o",
        str(output),
        "-e",
        "cpu",
        "-c",
        str(root / "cache"),
        *config.builder_options(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ExportError(
            f"onnxruntime-genai's model builder failed ({config.describe()}):\n{tail}"
        )
    if config.uses_nncf:
        from slimserve.techniques.quantize.llm_nncf import calibration_feeds, compress_folder

        tokens = list(load_tokenizer(model.hf_folder)(calibration_text or "")["input_ids"])
        compress_folder(
            output, config, calibration_feeds(output, tokens, config.calibration_samples)
        )
    if config.weights == "gguf":
        _import_gguf(model.hf_folder, hf_model.config, output, config.activations)
    shutil.rmtree(source, ignore_errors=True)
    return LlmModel(output, config.weights)


def _import_gguf(source: Path, hf_config: Any, folder: Path, activations: str) -> None:
    """The built float model's weights replaced by its GGUF file's own blocks."""
    import onnx

    from slimserve.models.causal_lm import gguf_source
    from slimserve.techniques.quantize.gguf_blocks import import_blocks

    file = gguf_source(source)
    if file is None:
        raise RecipeError(
            "weights: gguf re-expresses a GGUF file's own blocks: load the model from one "
            "({gguf: FILE} or {example: smollm2}), or use weights: int4 or int8."
        )
    onnx_model = onnx.load(folder / "model.onnx")
    import_blocks(onnx_model, file, hf_config, 4 if activations == "int8" else 1)
    for stale in folder.glob("model.onnx*"):
        stale.unlink()
    onnx.save(
        onnx_model, folder / "model.onnx", save_as_external_data=True, location="model.onnx.data"
    )
