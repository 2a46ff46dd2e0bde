"""Pruning on the digits CNN: one-shot vs gradual, 2:4, and channel pruning's real speed.

    python benchmarks/prune_digits.py [--update BENCHMARKS.md]

Every row prunes the same trained model and is evaluated on the same 450 test images.
Gradual rows use TF-MOT's PolynomialDecay (power 3) over 60% of the fine-tuning steps,
global magnitude pruning, and distillation from the dense model (KL, T=2) mixed 50/50
with the labels unless the row says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.core.specs import DataSpec
from slimserve.data import load_data
from slimserve.measure.bench import bench_interleaved
from slimserve.measure.evaluate import evaluate
from slimserve.measure.report import human_bytes, markdown_table
from slimserve.measure.summary import model_size

STEPS_PER_EPOCH = 22  # 1,347 training images in batches of 64


def run(
    base: ss.TorchModel, config: dict[str, Any], data: dict[str, ss.Dataset]
) -> tuple[ss.TorchModel, StepLog, float]:
    log = StepLog()
    ctx = ss.Context(data=data, reference=base, log=log)
    started = time.perf_counter()
    model = ss.PruneConfig.model_validate(config).apply(copy.deepcopy(base), ctx)
    return model, log, time.perf_counter() - started


def gradual(final: float, epochs: int, distill: float = 0.5) -> dict[str, Any]:
    end = int(epochs * STEPS_PER_EPOCH * 0.6)
    return {
        "scope": "global",
        "schedule": {
            "polynomial_decay": {"final_sparsity": final, "end_step": end, "frequency": 10}
        },
        "finetune": {"epochs": epochs, "distill": distill},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    train = load_data(DataSpec(example="digits", split="train"))
    test = load_data(DataSpec(example="digits", split="test"))
    data = {"train": train, "eval": test}
    base = ss.load("example:digits")
    assert isinstance(base, ss.TorchModel)
    dense_acc = evaluate(ss.load_predictor(base), test)["accuracy"]
    base_params = sum(p.numel() for p in base.module.parameters())
    rows = [
        [
            "dense baseline",
            "0%",
            f"{dense_acc:.4f}",
            "—",
            f"{base_params:,}",
            human_bytes(model_size(base)[1]),
            "—",
        ]
    ]
    cases: list[tuple[str, dict[str, Any]]] = [
        (f"one-shot {int(s * 100)}%, no fine-tuning", {"sparsity": s}) for s in (0.5, 0.8, 0.9)
    ]
    cases += [
        (f"gradual {int(s * 100)}%, fine-tune + distill", gradual(s, e))
        for s, e in ((0.5, 8), (0.8, 10), (0.9, 12), (0.95, 15))
    ]
    cases.append(("gradual 95%, fine-tune labels only", gradual(0.95, 15, distill=0.0)))
    cases.append(
        (
            "2:4, fine-tune + distill",
            {"granularity": "n:m", "n_m": "2:4", "finetune": {"epochs": 6}},
        )
    )
    for label, config in cases:
        model, log, seconds = run(base, config, data)
        acc = evaluate(ss.load_predictor(model), test)["accuracy"]
        sparsity = log.details.get("sparsity", 0.0)
        rows.append(
            [
                label,
                f"{sparsity:.1%}",
                f"{acc:.4f}",
                f"{100 * (acc - dense_acc):+.1f} pts",
                f"{log.details['params_after']:,}",
                human_bytes(model_size(model)[1]),
                f"{seconds:.1f} s",
            ]
        )
        print(rows[-1])
    headers = ["method", "sparsity", "accuracy", "vs dense", "params", "gzip size", "time"]

    channel_config = {
        "granularity": "channel",
        "importance": "taylor",
        "schedule": {"polynomial_decay": {"final_sparsity": 0.5, "end_step": 100, "frequency": 20}},
        "finetune": {"epochs": 8},
    }
    channel, log, seconds = run(base, channel_config, data)
    channel_acc = evaluate(ss.load_predictor(channel), test)["accuracy"]
    dense_onnx = ss.ExportConfig().apply(base, ss.Context())
    channel_onnx = ss.ExportConfig().apply(channel, ss.Context())
    timings = bench_interleaved(
        {
            "dense": ss.load_predictor(dense_onnx, spinning=False),
            "channel": ss.load_predictor(channel_onnx, spinning=False),
        },
        test,
        (1, 32),
        warmup=20,
        repeats=args.repeats,
    )
    params_after = log.details["params_after"]
    speed_rows = []
    for name, model_acc, params in (
        ("dense", dense_acc, base_params),
        ("channel 50%", channel_acc, params_after),
    ):
        key = "dense" if name == "dense" else "channel"
        b1, b32 = timings[key][1], timings[key][32]
        ratio = b32.items_per_s / timings["dense"][32].items_per_s
        speed_rows.append(
            [
                name,
                f"{model_acc:.4f}",
                f"{params:,} ({100 * params / base_params:.0f}%)",
                f"{b1.p50_ms:.3f}",
                f"{b32.p50_ms:.3f}",
                f"{b32.items_per_s:,.0f}",
                f"{ratio:.2f}x",
            ]
        )
    speed_headers = [
        "ONNX Runtime fp32",
        "accuracy",
        "params",
        "b1 p50 ms",
        "b32 p50 ms",
        "b32 items/s",
        "b32 vs dense",
    ]
    print(markdown_table(headers, rows))
    print(markdown_table(speed_headers, speed_rows))
    if args.update:
        body = (
            "Command: `python benchmarks/prune_digits.py --update BENCHMARKS.md` (run by "
            "`make bench`).\n\n"
            "Accuracy on the 450 digits test images after pruning the trained CNN (dense "
            "baseline in the first row). Gradual rows: TF-MOT PolynomialDecay (power 3, "
            "frequency 10) over the first 60% of fine-tuning, global magnitude threshold, "
            "loss = 0.5 x labels + 0.5 x KL distillation from the dense model (T = 2); the "
            "final classifier stays dense. Sparsity counts the pruned layers' weights. "
            "Unstructured zeros shrink the gzip size, not the run time.\n\n"
            + markdown_table(headers, rows)
            + "\n\nChannel pruning (50% of the output channels of conv1, conv2 and fc1, "
            "removed physically with torch-pruning's dependency graph; Taylor importance; "
            f"gradual over 100 steps, 8 epochs of fine-tuning, {seconds:.1f} s), exported "
            f"to ONNX and timed interleaved with the dense model, medians of {args.repeats} "
            "runs, 2 threads:\n\n" + markdown_table(speed_headers, speed_rows)
        )
        update(args.update, "prune-digits", body)


if __name__ == "__main__":
    main()
