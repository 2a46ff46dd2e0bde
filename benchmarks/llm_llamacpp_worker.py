"""llama.cpp's side of benchmarks/llm.py, run by the Python of the llama.cpp venv
(runs/bench/llamacpp-venv: llama-cpp-python compiled from source, which slimserve's own
pins do not need). It imports nothing of slimserve; it reads and writes plain files.

    python llm_llamacpp_worker.py quantize SRC.gguf DST.gguf Q8_0
    python llm_llamacpp_worker.py speed MODEL.gguf PROMPT.json NEW THREADS   # JSON to stdout
    python llm_llamacpp_worker.py logits MODEL.gguf WINDOWS.json OUT_DIR THREADS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np


def quantize(source: str, target: str, kind: str) -> None:
    """llama.cpp's own quantizer (what `llama-quantize` runs), re-quantizing the source's
    blocks through float (allow_requantize) as the tool does with --allow-requantize."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.allow_requantize = True
    params.nthread = 2
    code = llama_cpp.llama_model_quantize(source.encode(), target.encode(), params)
    if code != 0:
        raise SystemExit(f"llama_model_quantize failed ({code})")


def load(model: str, context: int, threads: int, logits_all: bool) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        model_path=model,
        n_ctx=context,
        n_batch=context,
        n_ubatch=context,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=logits_all,
        verbose=False,
    )


def speed(model: str, prompt_file: str, new: int, threads: int) -> None:
    """Greedy: time to the first new token after the prompt, then decode tokens/s."""
    prompt = json.loads(Path(prompt_file).read_text())
    llm = load(model, len(prompt) + new + 8, threads, False)
    for _ in llm.generate(prompt[:8], top_k=1, temp=0.0, reset=True):  # warm-up
        break
    started = time.perf_counter()
    first = last = started
    count = 0
    for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        count += 1
        last = time.perf_counter()
        if count == 1:
            first = last
        if count == new:
            break
    print(
        json.dumps(
            {
                "ttft_ms": (first - started) * 1000,
                "decode_tokens_per_s": (count - 1) / max(last - first, 1e-9),
            }
        )
    )


def logits(model: str, windows_file: str, out_dir: str, threads: int) -> None:
    """Every position's logits for each window (float16 .npy), from an empty cache."""
    windows = json.loads(Path(windows_file).read_text())
    llm = load(model, max(len(w) for w in windows), threads, True)
    for number, window in enumerate(windows):
        llm.reset()
        llm.eval(window)
        scores = np.asarray(llm.scores[: len(window)], dtype=np.float16)
        np.save(Path(out_dir) / f"window-{number}.npy", scores)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "quantize":
        quantize(*args)
    elif command == "speed":
        speed(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "logits":
        logits(args[0], args[1], args[2], int(args[3]))
    else:
        raise SystemExit(__doc__)
