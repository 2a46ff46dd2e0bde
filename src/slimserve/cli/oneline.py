"""One-line commands without a recipe: export, quantize, prune.

Each builds the recipe it stands for, runs it through the same pipeline as ``optimize``
(verified artifact, measured stages, report) and can print that recipe
(``--print-recipe``), so a user graduates to YAML by pasting it into a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
import yaml

from slimserve.cli.base import app, console, user_errors
from slimserve.core.errors import SlimserveError

MODEL_HELP = "Model file (.onnx, .pt2, .keras, safetensors), HF folder, pkg.mod:fn or example:NAME."
DATA_HELP = "Eval data: quality of every stage is measured on it (npz:F, text:F, example:...)."
PRINT_HELP = "Print the recipe this command runs (YAML) and exit without running it."
OUT_HELP = "Folder for the artifact (OUT/NAME/)."


def build_recipe(
    command: str,
    model: str,
    steps: list[dict[str, Any]],
    data: dict[str, str | None],
    max_drop: float,
    name: str | None = None,
) -> dict[str, Any]:
    """The recipe (as its YAML would read) that a one-line command runs."""
    from slimserve.cli.build import _data_block
    from slimserve.loading import parse_model_spec

    spec = parse_model_spec(model).model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    blocks = {split: _data_block(text) for split, text in data.items()}
    blocks = {split: block for split, block in blocks.items() if block is not None}
    recipe: dict[str, Any] = {
        "name": name or _default_name(spec, command),
        "model": spec,
        **({"data": blocks} if blocks else {}),
        "steps": steps,
        "goal": {"metric": _goal_metric(spec, blocks), "max_drop": max_drop},
    }
    return recipe


def _default_name(spec: dict[str, Any], command: str) -> str:
    source = next((str(v) for k, v in spec.items() if k != "task"), "model")
    stem = Path(source.split(":")[-1]).stem if "/" in source or "." in source else source
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem.split(":")[-1]).strip("-.") or "model"
    return f"{stem}-{command}"


def _goal_metric(spec: dict[str, Any], blocks: dict[str, Any]) -> str:
    """accuracy where the eval data has labels, else cosine to the original's outputs; the
    KL divergence for a decoder LM."""
    from slimserve.core.specs import ModelSpec

    if ModelSpec.model_validate(spec).is_causal_lm:
        return "kl_divergence"
    if "hf" in spec or spec.get("example") == "minilm":
        return "cosine_mean"
    block = blocks.get("eval") or blocks.get("calibration")
    if block is None:
        return "accuracy"
    from slimserve.data import load_data

    return "accuracy" if load_data(block).labels is not None else "cosine_mean"


def _run_or_print(recipe: dict[str, Any], out: Path, print_recipe: bool) -> None:
    from slimserve.cli.build import _optimize
    from slimserve.recipe import parse_recipe

    parsed = parse_recipe(recipe)  # a bad option fails here, named, before any work
    if print_recipe:
        typer.echo(yaml.safe_dump(recipe, sort_keys=False).rstrip())
        return
    console.print(
        "Recipe (slimserve optimize FILE runs it; --print-recipe prints it):", highlight=False
    )
    console.print(yaml.safe_dump(recipe, sort_keys=False).rstrip(), highlight=False)
    _optimize(parsed, out)


def _fraction(text: str) -> float:
    from slimserve.cli.build import _fraction as fraction

    return fraction(text)


@app.command()
@user_errors
def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help=OUT_HELP),
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    opset: int = typer.Option(18, "--opset", min=17, help="ONNX opset version."),
    to: str = typer.Option(
        "onnx",
        "--format",
        help="onnx (served), litert (.tflite, from a .keras file) or executorch (.pte).",
    ),
    precision: str = typer.Option(
        "float",
        "--quantize",
        help="Device formats: float | float16 | dynamic_int8 | int8 (litert); float | int8 "
        "(executorch). int8 calibrates on --calibration.",
    ),
    calibration: str | None = typer.Option(
        None, "--calibration", help="Calibration data for int8 (the representative dataset)."
    ),
    name: str | None = typer.Option(None, "--name", help="Artifact name (default: MODEL-export)."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help=PRINT_HELP),
) -> None:
    """Export to ONNX with a parity check, or to a device format (LiteRT, ExecuTorch), as an
    artifact (one line for a one-step recipe)."""
    body: dict[str, Any] = {"opset": opset} if to == "onnx" else {"format": to}
    if to != "onnx":
        body["quantize"] = precision
    splits = {"eval": data, "calibration": calibration}
    recipe = build_recipe("export", model, [{"export": body}], splits, 0.01, name)
    _run_or_print(recipe, out, print_recipe)


@app.command()
@user_errors
def quantize(
    model: str = typer.Argument(..., help=MODEL_HELP),
    mode: str = typer.Option(
        "dynamic",
        "--mode",
        "-m",
        help="dynamic | static | weight_only | fp16 | nncf; llm for a decoder LM (the default "
        "for one).",
    ),
    weights: str = typer.Option(
        "int4",
        "--weights",
        help="Decoder LMs (mode llm): int4 | int8 | fp32 | gguf (a GGUF's own blocks, exact).",
    ),
    group_size: int = typer.Option(
        32, "--group-size", help="Decoder LMs: weights per scale (16, 32, 64, 128, 256)."
    ),
    symmetric: bool = typer.Option(
        True, "--symmetric/--asymmetric", help="Decoder LMs: groups without/with zero points."
    ),
    awq: bool = typer.Option(
        False, "--awq", help="Decoder LMs, int4: AWQ's activation-aware scales (NNCF)."
    ),
    scale_estimation: bool = typer.Option(
        False, "--scale-estimation", help="Decoder LMs, int4: NNCF's scale estimation."
    ),
    int4_share: float = typer.Option(
        1.0,
        "--int4-share",
        min=0.01,
        max=1.0,
        help="Decoder LMs: share of weights in int4, the rest int8 by sensitivity (NNCF).",
    ),
    calibration: str | None = typer.Option(
        None,
        "--calibration",
        "-c",
        help="Calibration data (static, nncf; decoder LMs: prose for --awq, "
        "--scale-estimation, --int4-share). Default: --data (LMs: Python's docs).",
    ),
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    per_channel: bool = typer.Option(
        True, "--per-channel/--per-tensor", help="Weight scales per output channel (int8)."
    ),
    max_drop: str = typer.Option("1%", "--max-drop", help="Tolerated quality drop: 1% or 0.01."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help=OUT_HELP),
    name: str | None = typer.Option(
        None, "--name", help="Artifact name (default: MODEL-quantize)."
    ),
    print_recipe: bool = typer.Option(False, "--print-recipe", help=PRINT_HELP),
) -> None:
    """Quantize (exporting first when the model is PyTorch), as an artifact. A decoder LM
    (.gguf, a causal-LM Hugging Face folder, example:smollm2) gets its weights quantized
    for onnxruntime-genai, measured by KL divergence on held-out prose."""
    from slimserve.loading import parse_model_spec

    if parse_model_spec(model).is_causal_lm:
        llm: dict[str, Any] = {"mode": "llm", "weights": weights, "group_size": group_size}
        if not symmetric:
            llm["symmetric"] = False
        llm.update({k: v for k, v in (("awq", awq), ("scale_estimation", scale_estimation)) if v})
        if int4_share < 1.0:
            llm["int4_share"] = int4_share
        prose: dict[str, str | None] = {
            "eval": data or "example:english:other",
            "calibration": calibration,
        }
        steps: list[dict[str, Any]] = [{"quantize": llm}]
        recipe = build_recipe("quantize", model, steps, prose, _fraction(max_drop), name)
        _run_or_print(recipe, out, print_recipe)
        return
    modes = ("dynamic", "static", "weight_only", "fp16", "nncf")
    if mode not in modes:
        raise SlimserveError(f"--mode is one of {', '.join(modes)}, not '{mode}'.")
    needs_data = mode in ("static", "nncf")
    if needs_data and calibration is None and data is None:
        raise SlimserveError(
            f"--mode {mode} calibrates activation ranges on data: give --calibration DATA "
            "(e.g. npz:calib.npz or example:digits:train)."
        )
    body: dict[str, Any] = {"mode": mode}
    if mode in ("dynamic", "static"):
        body["per_channel"] = per_channel
    splits: dict[str, str | None] = {
        "eval": data,
        "calibration": (calibration or data) if needs_data else calibration,
    }
    recipe = build_recipe(
        "quantize", model, [{"quantize": body}], splits, _fraction(max_drop), name
    )
    _run_or_print(recipe, out, print_recipe)


@app.command()
@user_errors
def prune(
    model: str = typer.Argument(..., help=MODEL_HELP + " A PyTorch model."),
    sparsity: float = typer.Option(..., "--sparsity", "-s", min=0.0, max=0.99, help="0.5 = half."),
    granularity: str = typer.Option(
        "unstructured", "--granularity", help="unstructured | n:m | channel | head."
    ),
    train: str | None = typer.Option(
        None, "--train", help="Training data: fine-tune while pruning (recommended)."
    ),
    epochs: int = typer.Option(3, "--epochs", min=1, help="Fine-tuning passes over --train."),
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    max_drop: str = typer.Option("1%", "--max-drop", help="Tolerated quality drop: 1% or 0.01."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help=OUT_HELP),
    name: str | None = typer.Option(None, "--name", help="Artifact name (default: MODEL-prune)."),
    print_recipe: bool = typer.Option(False, "--print-recipe", help=PRINT_HELP),
) -> None:
    """Prune (fine-tuning with --train), then export, as an artifact."""
    body: dict[str, Any] = {"granularity": granularity, "sparsity": sparsity}
    if train is not None:
        body["finetune"] = {"epochs": epochs}
    steps: list[dict[str, Any]] = [{"prune": body}, {"export": {}}]
    splits = {"train": train, "eval": data}
    recipe = build_recipe("prune", model, steps, splits, _fraction(max_drop), name)
    _run_or_print(recipe, out, print_recipe)
