"""all-MiniLM-L6-v2: the one-line recipes a user would try, against slimserve's best
artifact (`slimserve demo minilm`'s recipe), interleaved in one run.

    python benchmarks/minilm.py [--update BENCHMARKS.md] [--rounds 3]

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
from slimserve.examples.minilm_anchors import HEADERS, compare
from slimserve.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = ss.load_recipe(Path(ss.__file__).parent / "examples" / "minilm.yaml")
        print("Running the demo minilm recipe...")
        ss.run_recipe(recipe, Path(tmp))
        result = compare(Path(tmp) / "minilm", rounds=args.rounds)
    table = markdown_table(HEADERS, result.rows)
    print(table)
    print(result.verdict)
    print(result.padding)
    if args.update:
        body = (
            "Command: `python benchmarks/minilm.py --update BENCHMARKS.md` (run by `make "
            f"bench`). {args.rounds} interleaved rounds, medians; 2 threads.\n\n"
            + table
            + "\n\n"
            + result.verdict
            + " "
            + result.padding
            + "\n\nThis machine has AVX2 only (no AVX-512 VNNI, BF16 or AMX), so its int8 "
            "kernels lack VNNI's dot products and bf16 runs emulated: the anchors' ratios "
            "differ from a Xeon's."
        )
        update(args.update, "minilm", body)


if __name__ == "__main__":
    main()
