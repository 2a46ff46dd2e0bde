"""llm-compressor's side of benchmarks/llm_sparsity.py, run by the Python of its own venv
(runs/bench/llmcompressor-venv: llm-compressor pins a transformers older than ours). It
imports nothing of slimserve; it reads and writes plain files.

    python llm_sparsity_worker.py SOURCE_DIR WINDOWS.json METHOD OUT_DIR

METHOD: sparsegpt-2:4 | sparsegpt-50% | wanda-2:4 | wanda-50%. Writes OUT_DIR/dense (the
pruned model, float32, its zeros stored: llm-compressor 0.14 no longer writes a sparse
format, "Sparse compression is no longer supported by compressed-tensors").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(source: str, windows_file: str, method: str, out: str) -> None:
    torch.set_num_threads(2)
    windows = json.loads(Path(windows_file).read_text())
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    data = Dataset.from_dict(
        {"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]}
    )
    algorithm, shape = method.split("-")
    structure = "2:4" if shape == "2:4" else "0:0"
    modifier = (SparseGPTModifier if algorithm == "sparsegpt" else WandaPruningModifier)(
        sparsity=0.5, mask_structure=structure, targets=["Linear"], ignore=["lm_head"]
    )
    oneshot(
        model=model,
        dataset=data,
        recipe=[modifier],
        num_calibration_samples=len(windows),
        max_seq_length=len(windows[0]),
    )
    root = Path(out)
    model.save_pretrained(root / "dense", save_compressed=False)
    tokenizer.save_pretrained(root / "dense")
    zeros = total = 0
    for name, parameter in model.named_parameters():
        if name.endswith("proj.weight"):
            zeros += int((parameter == 0).sum())
            total += parameter.numel()
    print(json.dumps({"zeros": zeros / total}))


if __name__ == "__main__":
    main(*sys.argv[1:])
