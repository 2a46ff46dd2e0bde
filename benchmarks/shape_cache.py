"""Fresh shapes: what the padding-free encoder's ``token_bucket`` buys a server.

    python benchmarks/shape_cache.py [--update BENCHMARKS.md] [--batches 150]

OpenVINO's CPU plugin builds kernels for each new row count its MatMuls see; a server's
batches of real tokens give a new count almost every run. Two artifacts of the bundled
MiniLM (padding-free + NNCF int8, the chain `minilm.yaml` tries third), one with exact
token counts (`token_bucket: 1`) and one rounded up to 16, built into runs/bench/ when
absent, run in OpenVINO on one stream of batches of 1-16 random eval sentences,
interleaved batch by batch: first as a server meets them (every shape new to the
predictor), then the same stream again (every shape cached).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.core.cpu import cpu_features
from slimserve.measure.report import markdown_table

BENCH = Path("runs/bench")
BUCKETS = (1, 16)


def artifact(bucket: int) -> Path:
    """The padding-free NNCF int8 MiniLM with ``token_bucket: bucket``, built once."""
    folder = BENCH / f"shape-cache-{bucket}"
    if not (folder / "minilm" / "manifest.json").exists():
        recipe = ss.Recipe.model_validate(
            {
                "name": "minilm",
                "model": {"example": "minilm"},
                "data": {
                    "calibration": {"example": "english", "split": "calibration"},
                    "eval": {"example": "english", "split": "eval"},
                },
                "steps": [
                    {"unpad": {"token_bucket": bucket}},
                    {"export": {}},
                    {
                        "quantize": {
                            "mode": "nncf",
                            "model_type": "transformer",
                            "preset": "mixed",
                            "subset_size": 256,
                        }
                    },
                ],
                "runtimes": {"candidates": ["openvino"]},
                "bench": {"batch_sizes": [1], "repeats": 3},
            }
        )
        ss.run_recipe(recipe, folder)
    return folder / "minilm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--batches", type=int, default=150)
    args = parser.parse_args()
    from slimserve.data import english_split
    from slimserve.examples.minilm import model_folder
    from slimserve.models.hf import load_tokenizer, tokenize
    from slimserve.runtime.openvino import OvPredictor

    texts = english_split("eval")
    tokenizer = load_tokenizer(model_folder())
    predictors = {b: OvPredictor(ss.load_artifact(artifact(b)).model) for b in BUCKETS}
    rng = random.Random(0)
    stream = [
        tokenize(tokenizer, rng.sample(texts, rng.randint(1, 16)), 256) for _ in range(args.batches)
    ]
    warm = tokenize(tokenizer, texts[:4], 256)
    for predictor in predictors.values():
        predictor.predict({k: warm[k] for k in predictor.input_names})
    times: dict[tuple[int, str], list[float]] = {}
    for phase in ("new", "cached"):
        for batch in stream:  # interleaved: both artifacts on each batch in turn
            for bucket, predictor in predictors.items():
                feeds = {k: batch[k] for k in predictor.input_names}
                started = time.perf_counter()
                predictor.predict(feeds)
                times.setdefault((bucket, phase), []).append(1e3 * (time.perf_counter() - started))
    rows = []
    for bucket in BUCKETS:
        new, cached = times[(bucket, "new")], times[(bucket, "cached")]
        rows.append(
            [
                f"`token_bucket: {bucket}`",
                f"{statistics.median(new):.1f}",
                f"{np.percentile(new, 90):.1f}",
                f"{sum(new) / 1e3:.2f}",
                f"{statistics.median(cached):.1f}",
                f"{sum(cached) / 1e3:.2f}",
            ]
        )
    headers = ["artifact", "new shapes p50 ms", "p90 ms", "total s", "cached p50 ms", "total s"]
    table = markdown_table(headers, rows)
    ratio = sum(times[(1, "new")]) / sum(times[(16, "new")])
    verdict = f"Buckets of 16 take the stream of new shapes {ratio:.2f}x faster."
    print(table)
    print(verdict)
    if args.update:
        body = (
            "Command: `python benchmarks/shape_cache.py --update BENCHMARKS.md` (run by "
            f"`make bench`). {args.batches} batches of 1-16 random `english` eval sentences, "
            "padding-free NNCF int8 MiniLM in OpenVINO (2 threads), both artifacts on each "
            "batch in turn; then the same stream again.\n\n"
            + table
            + "\n\n"
            + verdict
            + f"\n\nCPU flags: {', '.join(sorted(cpu_features())) or 'none of note'}."
        )
        update(args.update, "shape_cache", body)


if __name__ == "__main__":
    main()
