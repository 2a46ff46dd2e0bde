"""Every stage of the bundled digits recipe, timed interleaved in one run.

    python benchmarks/digits_stages.py [--repeats 300] [--update BENCHMARKS.md]

Baseline (PyTorch eager fp32), ONNX Runtime fp32 and each quantization, on the same
test split; batch sizes 1 and 32, 2 threads, medians of --repeats runs per model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.cli import print_stages
from slimserve.measure.report import markdown_table, stage_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--update", type=Path, help="BENCHMARKS.md to write the table into")
    args = parser.parse_args()
    recipe = ss.load_recipe(Path(str(files("slimserve.examples") / "digits.yaml")))
    raw = recipe.resolved()
    raw["bench"]["repeats"] = args.repeats
    # Dynamic int8 as an extra stage: the same recipe with both quantizations side by side
    # would chain them, so run the dynamic one as its own recipe and merge the stages.
    with tempfile.TemporaryDirectory() as tmp:
        static = ss.run_recipe(ss.parse_recipe(raw), tmp)
        raw_dynamic = {
            **raw,
            "name": "digits-dynamic",
            "steps": [{"quantize": {"mode": "dynamic"}}],
        }
        dynamic = ss.run_recipe(ss.parse_recipe(raw_dynamic), tmp)
    rows = [s.row() for s in static.stages]
    dynamic_rows = [s.row() for s in dynamic.stages]
    print_stages(rows, "digits: the demo recipe (one interleaved run)")
    print_stages(dynamic_rows, "digits: dynamic int8 (second run)")
    if args.update:
        headers, table = stage_table(rows)
        headers2, table2 = stage_table(dynamic_rows)
        body = (
            "Command: `python benchmarks/digits_stages.py --repeats "
            f"{args.repeats} --update BENCHMARKS.md` (run by `make bench`).\n\n"
            "The demo recipe (`slimserve demo`: channel pruning 50%, then unstructured 80%, "
            "both while fine-tuning with distillation, export, static int8): each stage "
            f"timed interleaved with the others in one run, medians of {args.repeats} runs, "
            "2 threads, ratios against PyTorch eager fp32. The unstructured step is there for "
            "the gzip size: dense kernels do not skip zeros.\n\n"
            + markdown_table(headers, table)
            + "\n\nORT dynamic int8 of the unpruned model, in its own interleaved run with its "
            "baseline. Dynamic quantization turns the convolutions into ConvInteger and "
            "quantizes activations at run time, which costs more than it saves on this "
            "small model: static QDQ is the mode to use for CNNs.\n\n"
            + markdown_table(headers2, table2)
        )
        update(args.update, "digits-stages", body)


if __name__ == "__main__":
    main()
