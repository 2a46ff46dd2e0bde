"""Every quantization mode on the digits CNN and a MatMul-heavy MLP, in one run each.

    python benchmarks/quantize.py [--repeats 200] [--update BENCHMARKS.md]

For each model: ONNX Runtime fp32, dynamic int8 (per tensor and per token), static int8
with each calibration method, 4-bit weight-only, fp16 and QAT, all timed interleaved
(batch 1 and 32, 2 threads, medians), accuracy on the 450 digits test images. Then the
fallback case: the CNN with one outlier neuron, which breaks static int8 until the
sensitivity-driven fallback keeps the two layers around it in float.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.core.specs import DataSpec
from slimserve.data import load_data
from slimserve.measure.bench import bench_interleaved
from slimserve.measure.evaluate import evaluate
from slimserve.measure.report import human_bytes, markdown_table


def train_mlp(train: ss.Dataset, seed: int = 0) -> ss.TorchModel:
    """64 -> 1024 -> 1024 -> 10, ReLU: 1.1 M parameters, almost all in two MatMuls."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )
    x = torch.from_numpy(train.inputs["input"])
    assert train.labels is not None
    y = torch.from_numpy(train.labels)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(15):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(module(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return ss.TorchModel(module.eval(), (x[:2],))


def candidates(
    model: ss.TorchModel, data: dict[str, ss.Dataset]
) -> dict[str, tuple[ss.OnnxModel, float]]:
    """name -> (model, seconds it took to make)."""
    train = data["train"]
    results: dict[str, tuple[ss.OnnxModel, float]] = {}
    started = time.perf_counter()
    fp32 = ss.ExportConfig().apply(model, ss.Context())
    results["fp32"] = (fp32, time.perf_counter() - started)
    configs = {
        "dynamic int8": ss.DynamicQuantizeConfig(),
        "dynamic int8, per-token": ss.DynamicQuantizeConfig(activation_scales="token"),
        "static int8, minmax": ss.StaticQuantizeConfig(),
        "static int8, entropy": ss.StaticQuantizeConfig(
            calibration=ss.CalibrationConfig(method="entropy")
        ),
        "static int8, percentile 99.999": ss.StaticQuantizeConfig(
            calibration=ss.CalibrationConfig(method="percentile")
        ),
        "int4 weight-only (block 32)": ss.WeightOnlyQuantizeConfig(block_size=32),
        "fp16": ss.Fp16QuantizeConfig(),
    }
    for name, config in configs.items():
        started = time.perf_counter()
        results[name] = (ss.quantize_onnx(fp32, config, train), time.perf_counter() - started)
    started = time.perf_counter()
    qat = ss.QATConfig.model_validate({"finetune": {"epochs": 3, "lr": 1e-4}})
    ctx = ss.Context(data={**data, "calibration": train}, reference=model, log=StepLog())
    results["QAT int8 (3 epochs)"] = (
        qat.apply(copy.deepcopy(model), ctx),
        time.perf_counter() - started,
    )
    return results


def table(model: ss.TorchModel, data: dict[str, ss.Dataset], repeats: int) -> str:
    test = data["eval"]
    made = candidates(model, data)
    timings = bench_interleaved(
        {n: ss.load_predictor(m, spinning=False) for n, (m, _) in made.items()},
        test,
        (1, 32),
        warmup=20,
        repeats=repeats,
    )
    fp32_size = len(made["fp32"][0].to_bytes())
    rows = []
    for name, (onnx_model, seconds) in made.items():
        size = len(onnx_model.to_bytes())
        accuracy = evaluate(ss.load_predictor(onnx_model), test)["accuracy"]
        b1, b32 = timings[name][1], timings[name][32]
        ratio = b32.items_per_s / timings["fp32"][32].items_per_s
        rows.append(
            [
                name,
                f"{human_bytes(size)} ({100 * size / fp32_size:.1f}%)",
                f"{accuracy:.4f}",
                f"{b1.p50_ms:.3f}",
                f"{b32.items_per_s:,.0f} ({ratio:.2f}x)",
                f"{seconds:.1f} s",
            ]
        )
        print(rows[-1])
    headers = [
        "ORT model",
        "size (vs fp32)",
        "accuracy",
        "b1 p50 ms",
        "b32 items/s (vs fp32)",
        "made in",
    ]
    return markdown_table(headers, rows)


def fallback_case(cnn: ss.TorchModel, data: dict[str, ss.Dataset]) -> str:
    broken = copy.deepcopy(cnn)
    with torch.no_grad():  # the same function, one fc1 neuron 1000x louder
        broken.module.fc1.weight[3] *= 1000
        broken.module.fc1.bias[3] *= 1000
        broken.module.fc_out.weight[:, 3] /= 1000
    fp32 = ss.ExportConfig().apply(broken, ss.Context())
    test = data["eval"]
    plain = ss.quantize_onnx(fp32, ss.StaticQuantizeConfig(), data["train"])
    log = StepLog()
    ctx = ss.Context(data={"calibration": data["train"], "eval": test}, reference=broken, log=log)
    started = time.perf_counter()
    recovered = ss.StaticQuantizeConfig(fallback="auto").apply(fp32, ctx)
    seconds = time.perf_counter() - started
    rows = [
        [name, f"{evaluate(ss.load_predictor(m), test)['accuracy']:.4f}"]
        for name, m in (
            ("fp32", fp32),
            ("static int8", plain),
            ("static int8 + fallback: auto", recovered),
        )
    ]
    return (
        markdown_table(["outlier CNN", "accuracy"], rows)
        + f"\n\nFallback ({seconds:.1f} s): {log.notes[0] if log.notes else 'none needed'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--update", type=Path)
    args = parser.parse_args()
    data = {
        "train": load_data(DataSpec(example="digits", split="train")),
        "eval": load_data(DataSpec(example="digits", split="test")),
    }
    cnn = ss.load("example:digits")
    assert isinstance(cnn, ss.TorchModel)
    mlp = train_mlp(data["train"])
    cnn_table = table(cnn, data, args.repeats)
    mlp_table = table(mlp, data, args.repeats)
    recovery = fallback_case(cnn, data)
    print(cnn_table, mlp_table, recovery, sep="\n\n")
    if args.update:
        body = (
            "Command: `python benchmarks/quantize.py --update BENCHMARKS.md` (run by "
            "`make bench`).\n\n"
            "Each table is one interleaved run: every model at batch 1 and 32, 2 threads, "
            f"medians of {args.repeats} runs, throughput ratios against ORT fp32 of the same "
            "model. Static int8: QDQ, per-channel int8 weights, uint8 activations, 256 "
            "calibration images. QAT: 3 epochs of fake-quant fine-tuning (lr 1e-4, 50/50 "
            "labels and distillation), then QDQ with the learned input ranges.\n\n"
            "**Digits CNN** (2 conv + 2 linear, 151 k parameters):\n\n"
            + cnn_table
            + "\n\n**MLP** (64-1024-1024-10, 1.1 M parameters, trained in the script):\n\n"
            + mlp_table
            + "\n\n**Sensitivity fallback**: the digits CNN with one fc1 neuron scaled 1000x "
            "up and its fc_out weights 1000x down (the same function in float):\n\n" + recovery
        )
        update(args.update, "quantize", body)


if __name__ == "__main__":
    main()
