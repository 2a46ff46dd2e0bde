"""One-shot unstructured and 2:4 sparsity on SmolLM2-135M-Instruct (SparseGPT and Wanda,
through llm-compressor): what it costs in quality, what it shrinks, and what it does not.

    python benchmarks/llm_sparsity.py [--update BENCHMARKS.md] [--methods sparsegpt-2:4,...]

llm-compressor pins a transformers older than ours, so it runs in its own venv
(runs/bench/llmcompressor-venv, made on first use with torch pinned to the CPU build) on
the float32 model and 64 windows of 256 tokens of calibration text (Python's
documentation); the pruned model comes back as a Hugging Face folder and is measured here
as every decoder LM is: perplexity, KL and top-1 against the unpruned float model on 8
windows of scikit-learn's dataset descriptions, built in int8 for onnxruntime-genai and
its decode tokens/s at batch 1 interleaved with the unpruned int8 build's. Sizes: the int8
build as stored and gzip-compressed (where zeros show; llm-compressor 0.14 writes no
sparse format any more).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

from slimserve.core.cpu import cpu_features
from slimserve.measure.report import human_bytes, markdown_table

VENV = Path("runs/bench/llmcompressor-venv")
WORKER = Path(__file__).parent / "llm_sparsity_worker.py"
METHODS = ("sparsegpt-2:4", "sparsegpt-50%", "wanda-2:4")


def venv_python() -> Path:
    """llm-compressor's venv, torch pinned to the CPU build (made once, ~3 minutes)."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pins = VENV / "constraints.txt"
    pins.write_text("torch==2.13.0\n")
    pip = [str(python), "-m", "pip", "-q", "install", "--no-cache-dir", "-c", str(pins)]
    subprocess.run([*pip, "llmcompressor==0.14.0.1"], check=True)
    return python


def build_size(model: Any) -> tuple[int, int]:
    """(bytes, gzip-compressed bytes) of an onnxruntime-genai build's model files."""
    files = sorted(model.folder.glob("model.onnx*"))
    raw = sum(f.stat().st_size for f in files)
    return raw, sum(len(gzip.compress(f.read_bytes(), compresslevel=6, mtime=0)) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    import torch

    from slimserve.core.specs import DataSpec, ModelSpec
    from slimserve.data import english_split
    from slimserve.loading import causal_lm_folder
    from slimserve.measure.llm import (
        decode_speed,
        eval_text,
        llm_quality,
        reference_for,
        token_windows,
    )
    from slimserve.models.causal_lm import load_causal_lm, text_windows
    from slimserve.models.hf import load_tokenizer
    from slimserve.techniques.quantize.llm import LlmQuantizeConfig, build_llm

    torch.set_num_threads(2)
    python = venv_python()
    source = causal_lm_folder(ModelSpec(example="smollm2"))
    tokenizer = load_tokenizer(source)
    work = Path(tempfile.mkdtemp(prefix="sparsity-", dir="runs/bench"))
    calibration = text_windows(
        list(tokenizer("\n".join(english_split("calibration")))["input_ids"]), 256, 64, "cal"
    )
    (work / "windows.json").write_text(json.dumps(calibration))
    text, _ = eval_text(DataSpec(example="english", split="other"))
    windows = token_windows(tokenizer(text)["input_ids"], 256, 8)
    original = load_causal_lm(source)
    reference = reference_for(original, windows)
    int8 = LlmQuantizeConfig(weights="int8", group_size=32)
    models = {"unpruned": build_llm(original, int8, work / "unpruned")}
    rows: dict[str, list[str]] = {}
    quality = {"unpruned": llm_quality(models["unpruned"], reference, 2)}
    for method in args.methods.split(","):
        out = work / method.replace(":", "-").replace("%", "")
        done = subprocess.run(
            [str(python), str(WORKER), str(source), str(work / "windows.json"), method, str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"llm-compressor {method} failed: {done.stderr[-800:]}")
        zeros = json.loads(done.stdout.strip().splitlines()[-1])["zeros"]
        pruned = load_causal_lm(out / "dense")
        torch_quality = llm_quality(pruned, reference, 2)
        models[method] = build_llm(pruned, int8, work / method)
        quality[method] = llm_quality(models[method], reference, 2)
        rows[method] = [
            method,
            f"{zeros:.0%}",
            *(human_bytes(n) for n in build_size(models[method])),
            f"{torch_quality['perplexity']:.2f}",
            f"{quality[method]['perplexity']:.2f}",
            f"{quality[method]['kl_divergence']:.4f}",
        ]
    speeds = decode_speed(models, list(tokenizer("Write about pruning.")["input_ids"]), 64, 5, 2)
    base = speeds["unpruned"]["decode_tokens_per_s"]
    table_rows = [
        [
            "none",
            "0%",
            *(human_bytes(n) for n in build_size(models["unpruned"])),
            f"{llm_quality(original, reference, 2)['perplexity']:.2f}",
            f"{quality['unpruned']['perplexity']:.2f}",
            f"{quality['unpruned']['kl_divergence']:.4f}",
            f"{base:.1f} (1.00x)",
        ]
    ]
    for method, row in rows.items():
        speed = speeds[method]["decode_tokens_per_s"]
        table_rows.append([*row, f"{speed:.1f} ({speed / base:.2f}x)"])
    headers = [
        "sparsity (llm-compressor)",
        "zeros in the blocks",
        "int8 build",
        "int8 gzip",
        "ppl float32",
        "ppl int8",
        "KL int8",
        "decode b1 tok/s int8",
    ]
    table = markdown_table(headers, table_rows)
    print(table)
    if args.update:
        flags = ", ".join(sorted(cpu_features()))
        body = (
            f"Command: `python benchmarks/llm_sparsity.py --methods {args.methods} --update "
            f"BENCHMARKS.md` (`make bench` runs all three). CPU flags: {flags}. 2 threads. "
            "llm-compressor 0.14 in its own venv "
            "(it pins transformers <= 5.17), 50% of every decoder block's Linear weights, "
            "the head kept; calibration: 64 windows of 256 tokens of Python's documentation; "
            "quality on 8 windows of 256 tokens of scikit-learn's dataset descriptions "
            "against the unpruned float model; decode medians of 5 interleaved rounds.\n\n"
            + table
            + "\n\nWhat it means: zeros shrink the compressed file (the gzip column), not the "
            "time a CPU runtime takes to decode: onnxruntime-genai (and llama.cpp, OpenVINO) "
            "read dense weights, zeros included, so the decode speed is the unpruned one. "
            "That is why slimserve prunes decoder LMs by removing blocks and channels "
            "(section llm-prune) and offers no unstructured or 2:4 mode for them."
        )
        update(args.update, "llm-sparsity", body)


if __name__ == "__main__":
    main()
