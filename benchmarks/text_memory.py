"""Does a text server give memory back after a burst of long texts?

    python benchmarks/text_memory.py [--update BENCHMARKS.md]

Builds a 2-layer BERT from a config (random weights, a word-piece vocabulary of real
English words: no download) into a text artifact, serves it with `slimserve serve`, and
reads the server's RSS before, at the peak of, and 3 s after 40 requests of 64 texts of
~15,000 characters each (8 at a time, ~1 M characters a request, under --max-text-chars).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from serve import BENCH, BIN, free_port, wait_ready
from slimserve.core.cpu import cpu_features
from slimserve.measure.report import markdown_table

OUT = BENCH / "text-memory"


def build() -> Path:
    from slimserve.examples.minilm import english_sentences
    from slimserve.examples.tiny_bert import build_tiny_bert

    artifact = OUT / "tiny-text"
    if (artifact / "manifest.json").is_file():
        return artifact
    folder = build_tiny_bert(OUT / "bert")
    texts = OUT / "texts.txt"
    texts.write_text("\n".join(english_sentences(32)))
    recipe = {
        "name": "tiny-text",
        "model": {"hf": str(folder)},
        "data": {"eval": {"text": str(texts)}},
        "steps": [{"export": {}}],
        "goal": {"metric": "cosine_mean"},
        "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
    }
    ss.run_recipe(ss.parse_recipe(recipe), OUT)
    return artifact


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    args = parser.parse_args()
    artifact = build()
    port = free_port()
    command = [str(BIN / "slimserve"), "serve", str(artifact), "--port", str(port)]
    command += ["--http-only", "--max-batch-size", "64"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, "tiny-text")
        infer = f"{url}/v2/models/tiny-text/infer"

        def request(texts: list[str]) -> int:
            body = {
                "inputs": [
                    {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
                ]
            }
            return httpx.post(infer, json=body, timeout=300).status_code

        request(["warm up"])
        before = rss_mb(process.pid)
        long_texts = [" ".join(["serving quantized models on small machines"] * 350)] * 64
        peak = before
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(request, long_texts) for _ in range(40)]
            while not all(f.done() for f in futures):
                peak = max(peak, rss_mb(process.pid))
                time.sleep(0.05)
            codes = sorted({f.result() for f in futures})
        time.sleep(3)
        after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    table = markdown_table(
        ["RSS before", "peak during the burst", "3 s after", "after / before", "goal", "answers"],
        [
            [
                f"{before:.0f} MB",
                f"{peak:.0f} MB",
                f"{after:.0f} MB",
                f"{after / before:.2f}",
                "≤ 1.20",
                ", ".join(str(c) for c in codes),
            ]
        ],
    )
    print(table)
    if args.update:
        body = (
            "Command: `python benchmarks/text_memory.py --update BENCHMARKS.md` (run by `make "
            f"bench`). CPU flags: {', '.join(sorted(cpu_features()))}. "
            "A 2-layer BERT text artifact served by `slimserve serve`; 40 requests "
            "of 64 texts of ~15,000 characters (~1 M characters each), 8 at a time. The "
            "server hands memory back after large requests: `malloc_trim` after tokenizing "
            "over 1 MB of text, and after a model run of over 8,192 input elements, whose "
            "ONNX Runtime arena is shrunk too.\n\n" + table
        )
        update(args.update, "text-memory", body)


if __name__ == "__main__":
    main()
