"""OpenVINO GenAI's side of benchmarks/llm.py, run by the Python of the OpenVINO venv
(runs/bench/openvino-venv: optimum-intel pins a transformers older than ours). It imports
nothing of slimserve; it reads and writes plain files.

    python llm_openvino_worker.py speed FOLDER PROMPT.json PROMPTS8.json NEW THREADS
    python llm_openvino_worker.py logits FOLDER WINDOWS.json OUT_DIR THREADS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai as ov_genai


def tokens(rows: list[list[int]]) -> ov_genai.TokenizedInputs:
    ids = np.asarray(rows, dtype=np.int64)
    return ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))


def speed(folder: str, prompt_file: str, batch_file: str, new: int, threads: int) -> None:
    """TTFT and decode tokens/s of one greedy sequence (OpenVINO GenAI's own perf
    metrics), then the new tokens/s of 8 sequences generated together."""
    pipe = ov_genai.LLMPipeline(folder, "CPU", INFERENCE_NUM_THREADS=threads)
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new
    config.do_sample = False
    prompt = json.loads(Path(prompt_file).read_text())
    batch = json.loads(Path(batch_file).read_text())
    pipe.generate(tokens([prompt[:8]]), config)  # warm-up
    started = time.perf_counter()
    result = pipe.generate(tokens([prompt]), config)
    wall = time.perf_counter() - started
    metrics = result.perf_metrics
    ttft = metrics.get_ttft().mean
    decode = (new - 1) / max(wall - ttft / 1000, 1e-9)
    started = time.perf_counter()
    together = pipe.generate(tokens(batch), config)
    seconds = time.perf_counter() - started
    made = sum(len(t) for t in together.tokens)
    print(
        json.dumps(
            {"ttft_ms": ttft, "decode_tokens_per_s": decode, "batch8_tokens_per_s": made / seconds}
        )
    )


def logits(folder: str, windows_file: str, out_dir: str, threads: int) -> None:
    """Every position's logits for each window (float16 .npy), from an empty state."""
    core = ov.Core()
    model = core.compile_model(
        str(Path(folder) / "openvino_model.xml"), "CPU", {"INFERENCE_NUM_THREADS": threads}
    )
    request = model.create_infer_request()
    for number, window in enumerate(json.loads(Path(windows_file).read_text())):
        request.reset_state()
        ids = np.asarray([window], dtype=np.int64)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "position_ids": np.arange(len(window), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, dtype=np.int32),
        }
        out = request.infer(feed)
        scores = np.asarray(out[model.output("logits")])[0].astype(np.float16)
        np.save(Path(out_dir) / f"window-{number}.npy", scores)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "speed":
        speed(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif command == "logits":
        logits(args[0], args[1], args[2], int(args[3]))
    else:
        raise SystemExit(__doc__)
