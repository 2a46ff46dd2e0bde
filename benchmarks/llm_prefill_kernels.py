"""Where prefill time goes: one of SmolLM2-135M's MLP products (576 x 1536) in ONNX
Runtime's kernels at 1 row (a decode step) and at 16 and 256 rows (a prompt), 2 threads.

    python benchmarks/llm_prefill_kernels.py [--update BENCHMARKS.md] [--rounds 5]

MatMulNBits is what the onnxruntime-genai builder and slimserve's LLM builds use (4- and
8-bit, blocks of 32; accuracy level 1 computes in float32, 4 in int8);
DynamicQuantizeMatMul is ONNX Runtime's int8 GEMM with one activation scale per call and
int8 weights per channel; MatMul is float32. Random weights (kernel speed does not depend
on them). Medians of interleaved rounds of 20 calls each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

K, N, BLOCK = 576, 1536, 32
ROWS = (1, 16, 256)


def graph(nodes: list[Any], weights: dict[str, np.ndarray]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])]
    initializers = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    model = helper.make_model(
        helper.make_graph(nodes, "product", inputs, outputs, initializers),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    return bytes(model.SerializeToString())


def nbits(weight: np.ndarray, bits: int, accuracy_level: int) -> bytes:
    from onnx import helper

    blocks = weight.T.reshape(N, K // BLOCK, BLOCK)
    levels = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(-1, keepdims=True) / levels
    codes = (np.clip(np.round(blocks / scales), -levels - 1, levels) + levels + 1).astype(np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    node = helper.make_node(
        "MatMulNBits",
        ["x", "codes", "scales"],
        ["y"],
        domain="com.microsoft",
        K=K,
        N=N,
        bits=bits,
        block_size=BLOCK,
        accuracy_level=accuracy_level,
    )
    return graph([node], {"codes": codes, "scales": scales.reshape(N, -1).astype(np.float32)})


def models(weight: np.ndarray) -> dict[str, bytes]:
    from onnx import helper

    scale = (np.abs(weight).max(0) / 127).astype(np.float32)
    dynamic = helper.make_node(
        "DynamicQuantizeMatMul", ["x", "w", "scale", "zero"], ["y"], domain="com.microsoft"
    )
    return {
        "MatMul float32": graph([helper.make_node("MatMul", ["x", "w"], ["y"])], {"w": weight}),
        "MatMulNBits 4-bit, float32 compute": nbits(weight, 4, 1),
        "MatMulNBits 4-bit, int8 compute": nbits(weight, 4, 4),
        "MatMulNBits 8-bit, int8 compute": nbits(weight, 8, 4),
        "DynamicQuantizeMatMul int8": graph(
            [dynamic],
            {
                "w": np.round(weight / scale).astype(np.int8),
                "scale": scale,
                "zero": np.zeros(N, np.int8),
            },
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--update", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime as ort

    from slimserve.core.cpu import cpu_features

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((K, N)) * 0.02).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    sessions = {
        name: ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        for name, data in models(weight).items()
    }
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for rows in ROWS:
            x = rng.standard_normal((rows, K)).astype(np.float32)
            for name, session in sessions.items():
                session.run(None, {"x": x})
                began = time.perf_counter()
                for _ in range(20):
                    session.run(None, {"x": x})
                times.setdefault((name, rows), []).append((time.perf_counter() - began) / 20)
    header = " | ".join(f"{rows} row{'s' if rows > 1 else ''}: µs (GFLOP/s)" for rows in ROWS)
    lines = [f"| kernel | {header} |", "|---|" + "---|" * len(ROWS)]
    for name in sessions:
        cells = []
        for rows in ROWS:
            seconds = statistics.median(times[(name, rows)])
            cells.append(f"{seconds * 1e6:.0f} ({2 * rows * K * N / seconds / 1e9:.0f})")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
    body = "\n".join(
        [
            f"One {K} x {N} product (SmolLM2-135M's MLP up/gate projection) in ONNX Runtime "
            f"{ort.__version__}'s kernels, 2 threads, medians of {args.rounds} interleaved "
            f"rounds. CPU flags: {flags}.",
            "",
            *lines,
            "",
            "What it says about time to first token: a prompt runs every product with many "
            "rows, and there MatMulNBits (what the LLM builds use) runs at float32 GEMM "
            "speed whatever its compute type, while ONNX Runtime's own int8 GEMM "
            "(DynamicQuantizeMatMul) is several times faster on a CPU with VNNI or AMX; at "
            "one row MatMulNBits is the fastest. DynamicQuantizeMatMul takes one "
            "activation scale per call (per tensor), which a prompt's outlier tokens "
            "stretch: a prefill graph on it is a speed lever whose fidelity is not measured "
            "here.",
            "",
            "Command: `python benchmarks/llm_prefill_kernels.py --update BENCHMARKS.md` "
            "(in `make bench`).",
        ]
    )
    print(body)
    if args.update:
        update(args.update, "llm-prefill-kernels", body)


if __name__ == "__main__":
    main()
