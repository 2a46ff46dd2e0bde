"""Embedding servers under load: slimserve's OpenAI route serving the bundled MiniLM
artifact against infinity-emb serving the same model (its torch and optimum/ONNX
engines), on the same machine and the same real sentences, in interleaved rounds.

    python benchmarks/embed_serve.py [--update BENCHMARKS.md] [--artifact DIR]
        [--rounds 3] [--requests 64] [--no-infinity]

The artifact is `src/slimserve/examples/minilm.yaml`'s (built into runs/bench/ when
--artifact is not given). infinity-emb runs in its own virtual environment under
runs/bench/ (its pins clash with ours; torch pinned to the CPU build), created here.
The load generator is its own process: threads with one keep-alive connection each,
OpenAI embedding requests of 1 and of 16 sentences at concurrency 1, 8 and 32.
Fidelity: each server's embeddings of the 256 eval sentences against PyTorch fp32.
The in-process ceiling: the same artifact's predictor on the same sentences, batches
of 32 padded to their longest, no HTTP.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from serve import free_port
from slimserve.core.cpu import cpu_features
from slimserve.measure.report import markdown_table

BENCH = Path("runs/bench")
INFINITY_VENV = BENCH / "infinity-venv"
# infinity's optimum engine keeps its optimized graph in the Hugging Face cache, keyed by
# model id only: its own cache here, emptied when the model is exported again.
INFINITY_CACHE = BENCH / "infinity-cache"
INFINITY_PINS = [
    "infinity-emb[server,torch,optimum]==0.0.78",
    "optimum[onnxruntime]==1.24.0",
    "onnxscript",  # torch 2.13's torch.onnx needs it, for the export below too
]
# What infinity-emb 0.0.78 was built against: its optimum engine calls ORTOptimizer with
# OptimizationConfig(optimize_with_onnxruntime_only=...), which optimum 2 removed (the
# engine then serves the unoptimized graph); numpy < 2 is its own pin.
INFINITY_CONSTRAINTS = (
    "torch==2.13.0",  # the CPU wheel; never a CUDA build
    "numpy<2",
    "transformers==4.48.3",
    "optimum==1.24.0",
    "pandas<2.3",  # the last releases built for numpy 1
    "pyarrow<19",
)
SHAPES = ((1, 1), (8, 1), (32, 1), (8, 16), (32, 16))  # (concurrency, sentences/request)


def infinity_python() -> Path:
    """infinity-emb's interpreter, its virtual environment created on first use."""
    python = INFINITY_VENV / "bin" / "python"
    if not python.exists():
        BENCH.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
        pins = BENCH / "infinity-constraints.txt"
        pins.write_text("\n".join(INFINITY_CONSTRAINTS) + "\n")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-c", str(pins), *INFINITY_PINS],
            check=True,
        )
    return python


# The export optimum 1.24 (what infinity-emb 0.0.78 was built against) makes: transformers'
# layout, its input and output names, TorchScript exporter. optimum-cli itself cannot make
# it under torch 2.13, whose default exporter is the torch.export one and writes its
# weights beside the graph under a name optimum 1.24 does not look for.
EXPORT_TRANSFORMERS_LAYOUT = """
import sys, torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1]).eval()
ids = torch.ones(2, 8, dtype=torch.long)
axes = {0: "batch_size", 1: "sequence_length"}
names = ["input_ids", "attention_mask", "token_type_ids"]
with torch.no_grad():
    torch.onnx.export(
        model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), sys.argv[2],
        input_names=names, output_names=["last_hidden_state"],
        dynamic_axes={name: axes for name in [*names, "last_hidden_state"]},
        opset_version=17, dynamo=False,
    )
"""


def infinity_model(python: Path) -> tuple[Path, str | None]:
    """The packaged MiniLM folder with the ONNX file infinity's optimum engine loads: a
    plain fp32 export in transformers' layout (last_hidden_state), the one that engine
    pools (a sentence-transformers export puts its already pooled outputs first)."""
    import os
    import shutil

    from slimserve.examples.minilm import model_folder

    folder = BENCH / "minilm-hf-onnx"
    layout = folder / ".export-layout"  # which export model.onnx is
    if not layout.exists() or layout.read_text() != "transformers-torchscript":
        shutil.copytree(model_folder(), folder, dirs_exist_ok=True)
        shutil.rmtree(INFINITY_CACHE, ignore_errors=True)  # its optimized copy of the old one
        exported = folder / "model.onnx.partial"
        done = subprocess.run(
            [str(python), "-c", EXPORT_TRANSFORMERS_LAYOUT, str(folder), str(exported)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
        )
        if done.returncode != 0:
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            failure = " ".join(last)
            return folder.resolve(), f"the transformers-layout ONNX export failed ({failure})"
        exported.replace(folder / "model.onnx")
        layout.write_text("transformers-torchscript")
    return folder.resolve(), None


def start(
    command: list[str], url: str, probe: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}  # nothing leaves
    env["HF_HUB_CACHE"] = env["HUGGINGFACE_HUB_CACHE"] = str(INFINITY_CACHE.resolve())
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    for _ in range(1200):
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited: {process.stderr.read().decode()[-800:]}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + probe, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"{command[0]} did not become ready")


def embed(url: str, route: str, model: str, texts: list[str]) -> np.ndarray:
    """The server's embeddings of ``texts`` (OpenAI request), in order."""
    rows = []
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(texts), 16):
            reply = client.post(
                url + route, json={"model": model, "input": texts[start : start + 16]}
            )
            reply.raise_for_status()
            rows += [d["embedding"] for d in sorted(reply.json()["data"], key=lambda d: d["index"])]
    return np.asarray(rows, dtype=np.float32)


LOAD = r"""
import json, sys, threading, time, httpx
url, model, concurrency, per, requests = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
texts = json.loads(sys.stdin.read())
latencies, lock = [], threading.Lock()
def client(index):
    with httpx.Client(timeout=120) as http:
        for n in range(index, requests, concurrency):
            batch = [texts[(n * per + i) % len(texts)] for i in range(per)]
            t0 = time.perf_counter()
            reply = http.post(url, json={"model": model, "input": batch})
            reply.raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - t0)
t0 = time.perf_counter()
threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"wall": time.perf_counter() - t0, "latencies": latencies}))
"""


def load(
    url: str, model: str, texts: list[str], concurrency: int, per: int, requests: int
) -> dict[str, float]:
    """One load run in its own process: sentences/s, p50 and p99 latency (ms)."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD, url, model, str(concurrency), str(per), str(requests)],
        input=json.dumps(texts).encode(),
        capture_output=True,
        check=True,
    )
    result = json.loads(done.stdout)
    latencies = np.array(result["latencies"]) * 1e3
    return {
        "rate": requests * per / result["wall"],
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def requests(shape: tuple[int, int], sentences: int) -> int:
    """Requests in one load run: ``sentences`` sentences, at least two per client."""
    concurrency, per = shape
    return max(2 * concurrency, sentences // per)


def ceiling(artifact: Path, batches: list[dict[str, np.ndarray]], rounds: int) -> float:
    """Sentences/s of the artifact's own predictor, in process (batches of 32)."""
    predictor = ss.load_predictor(artifact)
    names = predictor.input_names
    predictor.predict({n: batches[0][n] for n in names})
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for batch in batches:
            predictor.predict({n: batch[n] for n in names})
        rates.append(sum(len(b["input_ids"]) for b in batches) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--artifact", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sentences",
        type=int,
        default=256,
        help="Sentences per load run (at least 2 requests per client).",
    )
    parser.add_argument("--no-infinity", action="store_true")
    args = parser.parse_args()
    from slimserve.data import english_split
    from slimserve.examples.minilm import model_folder
    from slimserve.examples.minilm_anchors import torch_runner
    from slimserve.models.hf import load_tokenizer, tokenize

    artifact = args.artifact
    if artifact is None:
        artifact = BENCH / "minilm"
        if not (artifact / "manifest.json").exists():
            recipe = ss.load_recipe(Path(ss.__file__).parent / "examples" / "minilm.yaml")
            ss.run_recipe(recipe, BENCH)
    texts = english_split("eval")
    tokenizer = load_tokenizer(model_folder())
    batches = [tokenize(tokenizer, texts[i : i + 32], 256) for i in range(0, len(texts), 32)]
    reference_run, _ = torch_runner(torch.float32)
    reference = np.concatenate([reference_run(b) for b in batches])

    servers: dict[str, tuple[str, str, str]] = {}  # label: (url, route, model id)
    failed: list[str] = []
    processes = []
    try:
        port = free_port()
        slimserve_bin = Path(sys.executable).parent / "slimserve"
        processes.append(
            start(
                [str(slimserve_bin), "serve", str(artifact), "--port", str(port), "--http-only"],
                f"http://127.0.0.1:{port}",
                "/v2/health/ready",
            )
        )
        name = ss.load_artifact(artifact).manifest.name
        servers["slimserve (OpenAI route)"] = (f"http://127.0.0.1:{port}", "/v1/embeddings", name)
        if not args.no_infinity:
            python = infinity_python()
            folder, export_error = infinity_model(python)
            engines = ["optimum", "torch"]
            if export_error:
                failed.append(f"infinity-emb's optimum engine was not run: {export_error}")
                engines.remove("optimum")
            for engine in engines:
                port = free_port()
                # Run from the model folder as "--model-id .": infinity hands optimum the
                # ONNX file's path as found under the model id, and optimum matches it
                # against paths relative to the folder (an absolute id never matches).
                command = [str(python.parent.resolve() / "infinity_emb"), "v2"]
                command += ["--model-id", ".", "--engine", engine]
                # The model's own pooling (1_Pooling: mean). infinity's optimum engine
                # pools the CLS token unless told, whatever the model says (cosine 0.42
                # to fp32); its torch engine reads the pooling from sentence-transformers.
                command += ["--pooling-method", "mean"]
                command += ["--port", str(port), "--device", "cpu", "--no-model-warmup"]
                try:
                    processes.append(
                        start(command, f"http://127.0.0.1:{port}", "/health", cwd=folder)
                    )
                except RuntimeError as exc:
                    print(f"infinity-emb {engine}: {exc}")
                    failed.append(f"infinity-emb's {engine} engine did not start: {exc}")
                    continue
                servers[f"infinity-emb {engine}"] = (
                    f"http://127.0.0.1:{port}",
                    "/embeddings",
                    ".",
                )
        fidelity = {}
        for label, (url, route, model) in servers.items():
            got = embed(url, route, model, texts)
            got /= np.linalg.norm(got, axis=1, keepdims=True)
            fidelity[label] = np.sum(got * reference, axis=1)
        runs: dict[tuple[str, int, int], list[dict[str, float]]] = {}
        for _ in range(args.rounds):  # interleaved: every server in every round
            for shape in SHAPES:
                for label, (url, route, model) in servers.items():
                    runs.setdefault((label, *shape), []).append(
                        load(url + route, model, texts, *shape, requests(shape, args.sentences))
                    )
        top = ceiling(artifact, batches, args.rounds)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

    def median(label: str, c: int, per: int, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[(label, c, per)]))

    rows = []
    for label in servers:
        cosine = fidelity[label]
        rows.append(
            [label, f"{cosine.mean():.4f} / {cosine.min():.4f}"]
            + [f"{median(label, c, per, 'rate'):.0f}" for c, per in SHAPES]
            + [f"{median(label, 8, 1, 'p50'):.1f} / {median(label, 8, 1, 'p99'):.1f}"]
        )
    headers = ["server", "cosine mean / min"]
    headers += [f"c={c} x{per} sent/s" for c, per in SHAPES] + ["c=8 x1 p50 / p99 ms"]
    table = markdown_table(headers, rows)
    ours = "slimserve (OpenAI route)"
    others = [s for s in servers if s != ours]
    # The best engine among the faithful ones: infinity's fp32 engines must be near 1.0.
    faithful = [s for s in others if fidelity[s].mean() >= 0.995]
    best = max(faithful, key=lambda s: median(s, 32, 16, "rate"), default=None)
    verdict = f"In-process ceiling of the artifact: {top:.0f} sentences/s (batches of 32). "
    verdict += f"slimserve at c=32 x16: {median(ours, 32, 16, 'rate') / top:.2f}x the ceiling"
    if best is not None:
        rate = median(ours, 32, 16, "rate") / median(best, 32, 16, "rate")
        tail = median(ours, 8, 1, "p99") / median(best, 8, 1, "p99")
        verdict += (
            f"; {rate:.2f}x {best}'s sentences/s (goal >= 2x); p99 at c=8 x1 {tail:.2f}x "
            "its p99 (goal <= 0.5x)."
        )
    else:
        verdict += "; infinity-emb was not run."
    print(table)
    print(verdict)
    if args.update:
        body = (
            "Command: `python benchmarks/embed_serve.py --update BENCHMARKS.md` (run by "
            f"`make bench`). {args.rounds} interleaved rounds of {args.sentences} sentences per "
            "server and shape, medians; the 256 `english` eval sentences; servers and the "
            f"load generator share the machine's 2 cores. Artifact: `{artifact}`. "
            "infinity-emb 0.0.78 runs with `--pooling-method mean` (the model's pooling), "
            "its optimum engine on a plain fp32 ONNX export in transformers' layout.\n\n"
            + table
            + "\n\n"
            + verdict
            + f"\n\nCPU flags: {', '.join(sorted(cpu_features())) or 'none of note'}."
            + "".join(f"\n\n{line}" for line in failed)
        )
        update(args.update, "embed_serve", body)


if __name__ == "__main__":
    main()
