"""`slimserve tune` for a decoder LM: build the weight-only modes worth trying, measure
each against the float model (KL divergence on held-out prose) and for decode speed in one
interleaved run, keep the fastest within the KL budget, and write the recipe that rebuilds
it (``best-recipe.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from rich.console import Console

    from slimserve.stages import RunResult

CANDIDATES: tuple[dict[str, Any], ...] = (
    {"weights": "int8"},
    {"weights": "int4"},
    {"weights": "int4", "method": "k_quant"},
    {"weights": "int4", "symmetric": False, "head": "int8"},
    {"weights": "int4", "head": "int8", "sensitive_layers": "int8"},
)
"""From the most faithful to the smallest: int8, then int4 groups of 32 with the levers
onnxruntime-genai's builder offers (k-quant scales, zero points, the head and llama.cpp's
most sensitive layers in int8). A model read from a GGUF file also tries its own blocks
(``FROM_GGUF``); the calibrated NNCF methods are left to a recipe (minutes each)."""
FROM_GGUF: dict[str, Any] = {"weights": "gguf"}


def tune_llm(
    model: dict[str, Any], data: dict[str, Any], max_kl: float, out: Path, console: Console | None
) -> tuple[RunResult, Path]:
    """Run the candidates as a recipe's alternatives; the artifact is the fastest decode
    within ``max_kl``; ``out/best-recipe.yaml`` rebuilds it with `slimserve optimize`."""
    from slimserve.pipeline import run_recipe
    from slimserve.recipe import parse_recipe

    goal = {"metric": "kl_divergence", "max_drop": max_kl}
    from_gguf = "gguf" in model or model.get("example") == "smollm2"
    candidates = [*CANDIDATES, FROM_GGUF] if from_gguf else list(CANDIDATES)
    search = {
        "name": "tuned",
        "model": model,
        "data": data,
        "alternatives": [[{"quantize": {"mode": "llm", **c}}] for c in candidates],
        "goal": goal,
    }
    result = run_recipe(parse_recipe(search, base=Path.cwd()), out, console)
    steps = [{s.name: s.config} for s in result.artifact.manifest.steps]
    best = {"name": "tuned", "model": model, "data": data, "steps": steps, "goal": goal}
    path = out / "best-recipe.yaml"
    path.write_text(
        "# Written by slimserve tune: `slimserve optimize best-recipe.yaml` rebuilds it.\n"
        + yaml.safe_dump(best, sort_keys=False)
    )
    return result, path
