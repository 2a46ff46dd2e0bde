"""Prune -> distill -> quantize for SmolLM2-135M-Instruct, measured.

    python benchmarks/llm_prune.py [--update BENCHMARKS.md] [--tokens 60000] [--skip-recipe]

Two runs. First `src/slimserve/examples/smollm2-pruned.yaml` as a user runs it (`slimserve
demo smollm2-pruned`), timed end to end: depth pruning to 1.3x fewer weights read per
decoded token, distillation, int8, beside the unpruned int8 build. Then the sweep: depth
pruning of 4, 8, 12 and 15 of the 30 blocks and width pruning of 25% and 50% of the MLP
channels (about 10-40% fewer weights), each distilled on `--tokens` tokens and built in
int8, every stage measured against the unpruned float model on the same held-out tokens
(scikit-learn's dataset descriptions: perplexity, KL, top-1) and every int8 build's decode
tokens/s at batch 1 interleaved with the unpruned int8 build's, with the CPU flags.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.core.cpu import cpu_features
from slimserve.measure.report import human_bytes, markdown_table

LEVELS: tuple[dict[str, Any], ...] = (
    {"granularity": "depth", "layers": 4},
    {"granularity": "depth", "layers": 8},
    {"granularity": "depth", "layers": 12},
    {"granularity": "depth", "layers": 15},
    {"granularity": "width", "mlp": 0.25},
    {"granularity": "width", "mlp": 0.5},
)
INT8 = {"quantize": {"mode": "llm", "weights": "int8", "group_size": 32}}


def stage_rows(result: ss.RunResult) -> list[list[str]]:
    rows = []
    for stage in result.stages:
        m = stage.metrics
        rows.append(
            [
                stage.name,
                human_bytes(stage.size_bytes),
                f"{m['perplexity']:.2f}",
                f"{m['kl_divergence']:.4f}",
                f"{m['top1_agreement']:.3f}",
                f"{m['decode_tokens_per_s']:.1f}",
            ]
        )
    return rows


def chains_of(result: ss.RunResult, recipe: ss.Recipe) -> list[list[ss.Stage]]:
    """The stages of each alternative, in order (the baseline is stage 0)."""
    chains, at = [], 1
    for chain in recipe.alternatives:
        chains.append(result.stages[at : at + len(chain)])
        at += len(chain)
    return chains


def sweep_rows(result: ss.RunResult, recipe: ss.Recipe) -> list[list[str]]:
    chains = chains_of(result, recipe)
    unpruned = chains[0][-1]
    base_speed = unpruned.metrics["decode_tokens_per_s"]
    fp32 = result.stages[0]
    weights = fp32.size_bytes
    unpruned_ppl = unpruned.metrics["perplexity"]
    rows = [
        [
            "none (int8)",
            "0%",
            f"{fp32.metrics['perplexity']:.2f}",
            "-",
            f"{unpruned_ppl:.2f} ({unpruned_ppl / fp32.metrics['perplexity']:.2f}x)",
            f"{unpruned.metrics['kl_divergence']:.4f}",
            f"{base_speed:.1f} (1.00x)",
        ]
    ]
    for chain in chains[1:]:
        cut, distilled, built = chain
        speed = built.metrics["decode_tokens_per_s"]
        ratio = built.metrics["perplexity"] / fp32.metrics["perplexity"]
        rows.append(
            [
                cut.name.split(": ", 1)[-1],
                f"{1 - cut.size_bytes / weights:.0%}",
                f"{cut.metrics['perplexity']:.2f}",
                f"{distilled.metrics['perplexity']:.2f}",
                f"{built.metrics['perplexity']:.2f} ({ratio:.2f}x)",
                f"{built.metrics['kl_divergence']:.4f}",
                f"{speed:.1f} ({speed / base_speed:.2f}x)",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--tokens", type=int, default=60_000, help="Distillation tokens per level.")
    parser.add_argument("--skip-recipe", action="store_true", help="Only the sweep.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
    recipe = ss.load_recipe(Path(ss.__file__).parent / "examples" / "smollm2-pruned.yaml")
    sections = []
    headers = ["stage", "size", "perplexity", "KL vs fp32", "top-1", "decode b1 tok/s"]
    if not args.skip_recipe:
        started = time.perf_counter()
        result = ss.run_recipe(recipe, args.out)
        wall = time.perf_counter() - started
        table = markdown_table(headers, stage_rows(result))
        steps = " ".join(
            n for n in result.notes if n.startswith(("Depth pruning", "Distillation:"))
        )
        print(table)
        sections.append(
            f"**The recipe** (`slimserve demo smollm2-pruned`, "
            f"`src/slimserve/examples/smollm2-pruned.yaml`): {wall / 60:.1f} min end to end, "
            "with the two int8 builds, quality on 8 windows of 256 tokens for every stage and "
            f"the interleaved decode rounds. {steps}\n\n"
            + table
            + "\n\n"
            + "\n".join(f"- {n}" for n in result.notes[:3])
        )
    distill = {"distill": {"tokens": args.tokens, "lr": 2.0e-4}}
    alternatives = [[INT8]] + [[{"prune": level}, distill, INT8] for level in LEVELS]
    body = recipe.model_dump(mode="json", exclude_none=True)
    body.pop("alternatives", None)
    body.pop("steps", None)
    body["alternatives"] = alternatives
    body["name"] = "smollm2-prune-sweep"
    sweep_recipe = ss.parse_recipe(body)
    started = time.perf_counter()
    result = ss.run_recipe(sweep_recipe, args.out)
    wall = time.perf_counter() - started
    table = markdown_table(
        [
            "pruned",
            "fewer weights",
            "ppl pruned",
            "ppl distilled",
            "ppl int8 (vs fp32)",
            "KL int8",
            "decode b1 tok/s int8 (vs unpruned)",
        ],
        sweep_rows(result, sweep_recipe),
    )
    print(table)
    sections.append(
        f"**The sweep** ({wall / 60:.1f} min): each level distilled on {args.tokens:,} tokens "
        "of Python's documentation (train split), then int8 (groups of 32); perplexity of the "
        f"float model on the eval windows {result.stages[0].metrics['perplexity']:.2f}.\n\n" + table
    )
    if args.update:
        head = (
            "Command: `python benchmarks/llm_prune.py --update BENCHMARKS.md` (run by `make "
            f"bench`). CPU flags: {flags}. 2 threads; quality on 8 windows of 256 tokens of "
            "scikit-learn's dataset descriptions against the unpruned float model; decode "
            "tokens/s at batch 1, medians of 3 interleaved rounds (64 new tokens).\n\n"
        )
        update(args.update, "llm-prune", head + "\n\n".join(sections))


if __name__ == "__main__":
    main()
