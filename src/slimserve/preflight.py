"""Pre-flight: which techniques pay off on *this* machine, measured in under a minute.

Reads the CPU's instruction sets and the runtimes' kernel support, builds each candidate
transform quickly (few calibration samples), times them all interleaved on a few
batches, and states the lessons users otherwise learn the hard way, with the numbers
that show them on this model and this CPU.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from slimserve.core.cpu import FEATURES
from slimserve.core.cpu import cpu_features as probe_features
from slimserve.core.errors import SlimserveError
from slimserve.data import Dataset

ISA_FLAGS = FEATURES


BF16_PROBE = "torch program bf16"


def cpu_features() -> dict[str, bool]:
    """Which of the instruction sets that matter for int8/bf16 kernels the CPU has."""
    present = probe_features()
    return {name: name in present for name in ISA_FLAGS}


def runtime_support() -> dict[str, str]:
    import onnxruntime as ort
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
        "torch": torch.__version__,
        "torch cpu capability": str(torch.backends.cpu.get_cpu_capability()),
        "torch quantized engines": ", ".join(torch.backends.quantized.supported_engines),
    }


@dataclass
class Probe:
    name: str
    model: Any
    size_bytes: int = 0
    cosine: float = 1.0
    b1_ms: float = 0.0
    b32_items_per_s: float = 0.0
    seconds: float = 0.0
    b32_timing: Any = None  # bench.Timing at batch 32, for paired ratios


@dataclass
class Preflight:
    features: dict[str, bool]
    runtimes: dict[str, str]
    probes: list[Probe] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _probe_models(onnx_fp32: Any, torch_model: Any, data: Dataset) -> list[Probe]:
    from slimserve.techniques.quantize.configs import (
        CalibrationConfig,
        DynamicQuantizeConfig,
        Fp16QuantizeConfig,
        StaticQuantizeConfig,
        WeightOnlyQuantizeConfig,
    )
    from slimserve.techniques.quantize.ort import quantize_onnx

    calibration = data.take(min(len(data), 64))
    specs: list[tuple[str, Any]] = [
        ("fp32 (ORT)", None),
        ("dynamic int8", DynamicQuantizeConfig()),
        ("dynamic int8, uint8 weights", DynamicQuantizeConfig(weights="uint8")),
        (
            "static int8, per-channel",
            StaticQuantizeConfig(calibration=CalibrationConfig(samples=max(16, len(calibration)))),
        ),
        (
            "static int8, per-tensor",
            StaticQuantizeConfig(
                per_channel=False,
                calibration=CalibrationConfig(samples=max(16, len(calibration))),
            ),
        ),
        ("fp16", Fp16QuantizeConfig()),
    ]
    if any(n.op_type in ("Gemm", "MatMul") for n in onnx_fp32.proto.graph.node):
        specs.append(("int4 weight-only", WeightOnlyQuantizeConfig(block_size=32)))
    probes = []
    for name, config in specs:
        started = time.perf_counter()
        try:
            model = onnx_fp32 if config is None else quantize_onnx(onnx_fp32, config, calibration)
        except SlimserveError:
            continue
        probes.append(Probe(name, model, seconds=time.perf_counter() - started))
    if torch_model is not None and torch_model.example_inputs is not None:
        import torch

        from slimserve.techniques.torch_program import export_program

        started = time.perf_counter()
        try:
            program, _ = export_program(torch_model, torch.bfloat16)
        except SlimserveError:
            program = None
        if program is not None:  # bf16 is recommended only when timed faster here
            probes.append(Probe(BF16_PROBE, program, seconds=time.perf_counter() - started))
    if torch_model is not None:
        from slimserve.core.context import Context, StepLog
        from slimserve.techniques.export import ExportConfig
        from slimserve.techniques.prune.config import PruneConfig

        started = time.perf_counter()
        pruned = PruneConfig(sparsity=0.5).apply(copy.deepcopy(torch_model), Context(log=StepLog()))
        probes.append(
            Probe(
                "unstructured 50% (ORT fp32)",
                ExportConfig().apply(pruned, Context()),
                seconds=time.perf_counter() - started,
            )
        )
    return probes


def preflight(model: Any, data: Dataset | None = None, repeats: int = 30) -> Preflight:
    """Measure every candidate on this machine; return the table's data and warnings."""
    from slimserve.core.context import Context
    from slimserve.core.metrics import cosine
    from slimserve.measure.bench import bench_interleaved, synthetic_data
    from slimserve.measure.summary import model_size
    from slimserve.measure.timing import TIMED_SPINNING
    from slimserve.models import OnnxModel, TorchModel
    from slimserve.runtime import OrtPredictor, Predictor, TorchPredictor, predict_all
    from slimserve.techniques.export import ExportConfig

    torch_model = model if isinstance(model, TorchModel) else None
    onnx_fp32 = model if isinstance(model, OnnxModel) else ExportConfig().apply(model, Context())
    data = (data if data is not None else synthetic_data(onnx_fp32, 64)).renamed(
        onnx_fp32.input_names
    )
    result = Preflight(cpu_features(), runtime_support())
    result.probes = _probe_models(onnx_fp32, torch_model, data)
    predictors: dict[str, Predictor] = {
        p.name: TorchPredictor(p.model)
        if p.name == BF16_PROBE
        else OrtPredictor(p.model, spinning=TIMED_SPINNING)
        for p in result.probes
    }
    sample = data.take(min(len(data), 256))
    reference = predict_all(predictors["fp32 (ORT)"], sample)
    timings = bench_interleaved(predictors, sample, (1, 32), warmup=5, repeats=repeats)
    for probe in result.probes:
        probe.size_bytes = model_size(probe.model)[0]
        probe.cosine = float(cosine(reference, predict_all(predictors[probe.name], sample)).mean())
        probe.b1_ms = timings[probe.name][1].p50_ms
        probe.b32_items_per_s = timings[probe.name][32].items_per_s
        probe.b32_timing = timings[probe.name][32]
    result.warnings = _warnings(result)
    return result


def ranking(result: Preflight) -> list[str]:
    """Techniques by predicted batch-32 throughput, best first."""
    return [p.name for p in sorted(result.probes, key=lambda p: -p.b32_items_per_s)]


def _warnings(result: Preflight) -> list[str]:
    by = {p.name: p for p in result.probes}
    fp32 = by["fp32 (ORT)"]
    notes = []
    if not result.features.get("avx512_vnni") and not result.features.get("amx_int8"):
        notes.append(
            "No AVX512-VNNI/AMX-INT8: int8 kernels have no fast dot product here; "
            "expect small int8 speed-ups and consider quantize.reduce_range: true."
        )
    bf16 = by.get(BF16_PROBE)
    if bf16 is not None:  # a claim about bf16 only from its timing on this machine
        ratio = bf16.b32_timing.speedup_over(fp32.b32_timing)
        has = (
            "has"
            if result.features.get("avx512_bf16") or result.features.get("amx_bf16")
            else "lacks"
        )
        verdict = (
            "faster: worth a torch program (runtimes: {candidates: [onnx, torch]})"
            if ratio.measurable and ratio.median > 1 and not ratio.contended
            else "not faster: keep ONNX Runtime"
        )
        notes.append(
            f"This CPU {has} AVX512-BF16/AMX-BF16; a bf16 PyTorch program ran at "
            f"{ratio.describe()} the speed of ORT fp32 at batch 32: {verdict}."
        )
    elif result.features.get("avx512_bf16") or result.features.get("amx_bf16"):
        notes.append(
            "This CPU has AVX512-BF16/AMX-BF16, but bf16 was not timed (an ONNX model has "
            "no PyTorch program): give the PyTorch model to measure it."
        )
    unstructured = by.get("unstructured 50% (ORT fp32)")
    if unstructured:
        ratio = unstructured.b32_timing.speedup_over(fp32.b32_timing)
        notes.append(
            "Unstructured sparsity does not speed up dense kernels: 50% zeros ran at "
            f"{ratio.describe()} fp32 speed. It only shrinks the compressed file; use "
            "channel/head pruning for speed."
        )
    u8, s8 = by.get("dynamic int8, uint8 weights"), by.get("dynamic int8")
    if u8 and s8 and u8.b32_items_per_s < 0.9 * s8.b32_items_per_s:
        notes.append(
            f"uint8 weights use U8U8 kernels: dynamic int8 with uint8 weights ran at "
            f"{u8.b32_items_per_s / s8.b32_items_per_s:.2f}x the speed of int8 weights."
        )
    tensor, channel = by.get("static int8, per-tensor"), by.get("static int8, per-channel")
    if tensor and channel and tensor.cosine < channel.cosine - 0.001:
        notes.append(
            f"Per-tensor weight scales cost fidelity: cosine {tensor.cosine:.4f} vs "
            f"{channel.cosine:.4f} per-channel."
        )
    if s8 and s8.b1_ms > fp32.b1_ms:
        notes.append(
            f"Dynamic int8 is slower than fp32 at batch 1 on this model "
            f"({s8.b1_ms:.3f} vs {fp32.b1_ms:.3f} ms): quantizing activations at run time "
            "costs more than the int8 math saves. Prefer static int8."
        )
    return notes


def summary_rows(result: Preflight) -> list[list[str]]:
    fp32 = next(p for p in result.probes if p.name == "fp32 (ORT)")
    rows = []
    for probe in sorted(result.probes, key=lambda p: -p.b32_items_per_s):
        rows.append(
            [
                probe.name,
                f"{100 * probe.size_bytes / fp32.size_bytes:.0f}%",
                f"{probe.cosine:.4f}",
                f"{fp32.b1_ms / probe.b1_ms:.2f}x",
                f"{probe.b32_items_per_s / fp32.b32_items_per_s:.2f}x",
            ]
        )
    return rows
