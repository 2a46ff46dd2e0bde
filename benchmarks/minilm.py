"""all-MiniLM-L6-v2: the one-line recipes a user would try, against slimserve's best
artifact (`slimserve demo minilm`'s recipe), interleaved in one run.

    python benchmarks/minilm.py [--update BENCHMARKS.md] [--rounds 3]
        [--recipe minilm-static]   # another bundled recipe; recorded in its own section

What is measured and how: `slimserve.examples.minilm_anchors` (shared with the demo).
2 threads everywhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.core.cpu import cpu_features
from slimserve.examples.minilm_anchors import HEADERS, compare
from slimserve.measure.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--recipe", default="minilm", help="A bundled recipe: minilm, ...")
    args = parser.parse_args()
    recipe_file = Path(ss.__file__).parent / "examples" / f"{args.recipe}.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        recipe = ss.load_recipe(recipe_file)
        print(f"Running the {args.recipe} recipe...")
        ss.run_recipe(recipe, Path(tmp))
        manifest = ss.load_artifact(Path(tmp) / recipe.name).manifest
        levers = lever_table(manifest)
        routing = small_batch_table(manifest)
        result = compare(Path(tmp) / recipe.name, rounds=args.rounds)
    table = markdown_table(HEADERS, result.rows)
    print(levers)
    print(table)
    print(result.verdict)
    print(result.padding)
    if args.update:
        flag = "" if args.recipe == "minilm" else f" --recipe {args.recipe}"
        body = (
            f"Command: `python benchmarks/minilm.py{flag} --update BENCHMARKS.md` (run by "
            f"`make bench`). The artifact: `src/slimserve/examples/{args.recipe}.yaml`. "
            f"{args.rounds} interleaved rounds, medians; 2 threads.\n\n"
            + table
            + "\n\n"
            + result.verdict
            + " "
            + result.padding
            + f"\n\nCPU flags: {', '.join(sorted(cpu_features())) or 'none of note'}. Int8 "
            "kernels gain from VNNI (and AMX) and bf16 runs natively only with AVX512-BF16 "
            "or AMX, so the ratios differ between CPU kinds.\n\n"
            "Per lever: every stage of the recipe's own run (each alternative, in each "
            "runtime it allows), timed interleaved by the pipeline on the first 32 eval "
            "sentences padded to their longest (10 rounds, medians); `alt N` is the N-th "
            "list under the recipe's `alternatives`.\n\n" + levers + routing
        )
        update(args.update, args.recipe, body)


def lever_table(manifest: ss.Manifest) -> str:
    """The pipeline's stages (one per lever and runtime) as a markdown table."""
    rows = []
    base = manifest.stages[0]["timings"]["32"]["items_per_s"]
    for stage in manifest.stages:
        metrics, timings = stage.get("metrics") or {}, stage["timings"]
        rate = timings["32"]["items_per_s"]
        rows.append(
            [
                stage["stage"],
                f"{metrics['cosine_mean']:.4f}" if "cosine_mean" in metrics else "-",
                f"{metrics['top5_neighbours']:.3f}" if "top5_neighbours" in metrics else "-",
                f"{stage['size_bytes'] / 1e6:.1f} MB",
                f"{timings['1']['p50_ms']:.2f}",
                f"{rate:.0f} ({rate / base:.2f}x)",
            ]
        )
    headers = ["stage", "cosine mean", "top-5", "size", "b1 p50 ms", "b32 sentences/s"]
    return markdown_table(headers, rows)


def small_batch_table(manifest: ss.Manifest) -> str:
    """The run's decision on a second build for small batches, with the probes it timed."""
    note = next((n for n in manifest.notes if " executable" in n), "")
    start = max(note.find("One executable"), note.find("Two executables"))
    decision = note[start : note.find(").", start) + 2] if start >= 0 else ""
    small = manifest.small_batches
    if not small:
        return f"\n\nSmall batches: {decision or 'no other build met the goal.'}"
    rows = [
        [str(work), f"{mine:.2f}", f"{served:.2f}", f"{served / mine:.2f}x"]
        for work, mine, served in small["points"]
    ]
    headers = ["rows x tokens", f"{small['stage']} ms", "served build ms", "speedup"]
    return f"\n\nSmall batches: {decision}\n\n" + markdown_table(headers, rows)


if __name__ == "__main__":
    main()
