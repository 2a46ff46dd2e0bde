"""The decoder LM demo's anchors, the short version: onnxruntime-genai's model builder
``-p int8`` and ``-p int4`` (its defaults: what its users run, installed with the ``[llm]``
extra) made from the same float model, measured beside the artifact on the same tokens,
interleaved: size, time to first token after a prompt of the eval text, decode tokens/s
at batch 1 after it, KL and top-1 against the float model on the recipe's eval windows.

The artifact runs as ``slimserve serve`` runs it (its engine, prompts where its manifest
says); the anchors in onnxruntime-genai's own generation loop. KL and top-1 are every
build's ONNX Runtime logits (the decode steps' arithmetic). llama.cpp and OpenVINO GenAI
pin other packages than ours: their rows are ``benchmarks/llm.py``'s (BENCHMARKS.md,
section llm), each in its own venv.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HEADERS = ["build", "MB", "TTFT ms", "b1 tok/s", "KL", "top-1"]
ANCHORS = ("int8", "int4")
PROMPT_TOKENS, NEW_TOKENS = 256, 64
ARTIFACT = "slimserve artifact (served)"


@dataclass(frozen=True)
class LlmComparison:
    rows: list[list[str]]
    verdict: str


def compare(
    path: Path, rounds: int = 2, threads: int = 2, log: Callable[[str], None] = lambda m: None
) -> LlmComparison:
    """The artifact at ``path`` against the builder's int8 and int4 builds of its source."""
    from slimserve.artifact import load_artifact
    from slimserve.core.metrics import next_token_metrics
    from slimserve.core.specs import DataSpec, ModelSpec
    from slimserve.loading import causal_lm_folder
    from slimserve.measure.llm import eval_text, token_windows, torch_logits, window_length
    from slimserve.models.causal_lm import load_causal_lm
    from slimserve.models.hf import load_tokenizer
    from slimserve.models.llm import LlmModel
    from slimserve.runtime.generation import Generator

    artifact = load_artifact(path)
    assert isinstance(artifact.model, LlmModel)
    hf_folder = causal_lm_folder(ModelSpec.model_validate(artifact.manifest.source.spec))
    spec = DataSpec.model_validate(artifact.manifest.recipe["data"]["eval"])
    text, _ = eval_text(spec)
    tokens = list(load_tokenizer(hf_folder)(text)["input_ids"])
    windows = token_windows(tokens, window_length(spec), spec.samples)
    log("float model's logits")
    model = load_causal_lm(hf_folder)
    expected = np.concatenate([torch_logits(model, w)[:-1] for w in windows])
    del model
    targets = np.concatenate([np.asarray(w[1:]) for w in windows])
    folders = {ARTIFACT: artifact.model.folder}
    for precision in ANCHORS:
        log(f"onnxruntime-genai builder -p {precision}")
        folders[f"onnxruntime-genai builder -p {precision}"] = _builder(
            hf_folder, path.parent / ".anchors" / f"{path.name}-builder-{precision}", precision
        )
    quality = {}
    for name, folder in folders.items():
        log(f"quality: {name}")
        generator = Generator(folder, threads)
        logits = np.concatenate([generator.logits(w)[:-1] for w in windows])
        quality[name] = next_token_metrics(expected, logits, targets)
    prompt = tokens[:PROMPT_TOKENS]
    runs = {name: _anchor_run(Generator(f, threads), prompt) for name, f in folders.items()}
    record = artifact.manifest.llm_prefill
    runs[ARTIFACT], engine = _engine_run(folders[ARTIFACT], threads, record, prompt)
    speeds: dict[str, list[tuple[float, float]]] = {name: [] for name in folders}
    try:
        for run in runs.values():
            run()  # warm-up
        for number in range(rounds):
            log(f"speed, round {number + 1} of {rounds}")
            for name, run in runs.items():
                speeds[name].append(run())
    finally:
        engine.close()
    rows = []
    for name, folder in folders.items():
        ttft = statistics.median(s[0] for s in speeds[name])
        decode = statistics.median(s[1] for s in speeds[name])
        size = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
        metrics = quality[name]
        rows.append(
            [name, f"{size / 1e6:.0f}", f"{ttft * 1000:.1f}", f"{decode:.1f}",
             f"{metrics['kl_divergence']:.4f}", f"{metrics['top1_agreement']:.3f}"]
        )  # fmt: skip
    ours, int8 = speeds[ARTIFACT], speeds["onnxruntime-genai builder -p int8"]
    ttft_ratio = statistics.median(s[0] for s in ours) / statistics.median(s[0] for s in int8)
    decode_ratio = statistics.median(s[1] for s in ours) / statistics.median(s[1] for s in int8)
    where = f"OpenVINO {record['precision']}" if record else "ONNX Runtime"
    verdict = (
        f"Against the builder's -p int8 in this run: time to first token {ttft_ratio:.2f}x, "
        f"decode {decode_ratio:.2f}x (prompts in {where}, decode steps in ONNX Runtime). "
        "llama.cpp and OpenVINO GenAI beside these: python benchmarks/llm.py."
    )
    return LlmComparison(rows, verdict)


def _builder(hf_folder: Path, target: Path, precision: str) -> Path:
    """onnxruntime-genai's model builder, as its users run it (kept for the next demo)."""
    if (target / "genai_config.json").is_file():
        return target
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_folder)]
    command += ["-o", str(target), "-e", "cpu", "-p", precision, "-c", str(target / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        from slimserve.core.errors import SlimserveError

        raise SlimserveError(
            f"onnxruntime-genai's builder failed on '{hf_folder}': {done.stderr[-400:]}"
        )
    return target


def _anchor_run(generator: Any, prompt: list[int]) -> Callable[[], tuple[float, float]]:
    """One greedy generation in onnxruntime-genai's loop: (TTFT s, decode tokens/s)."""
    og, model = generator.og, generator.model

    def run() -> tuple[float, float]:
        params = og.GeneratorParams(model)
        total = len(prompt) + NEW_TOKENS
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        started = time.perf_counter()
        loop = og.Generator(model, params)
        loop.append_tokens(np.asarray([prompt], dtype=np.int32))
        loop.generate_next_token()
        first = time.perf_counter()
        while not loop.is_done():
            loop.generate_next_token()
        return first - started, (NEW_TOKENS - 1) / (time.perf_counter() - first)

    return run


def _engine_run(
    folder: Path, threads: int, record: dict[str, Any] | None, prompt: list[int]
) -> tuple[Callable[[], tuple[float, float]], Any]:
    """One greedy request through the serving engine: (TTFT s, decode tokens/s); and the
    engine, to close."""
    from slimserve.serve.llm_engine import LlmEngine
    from slimserve.serve.llm_sampling import Sampling

    precision = str(record["precision"]) if record else None
    engine = LlmEngine(folder, threads, 1, PROMPT_TOKENS + NEW_TOKENS + 8, prefill=precision)

    def run() -> tuple[float, float]:
        stamps: list[float] = []
        done = threading.Event()

        def emit(token: Any) -> None:
            stamps.append(time.perf_counter())
            if token.finish:
                done.set()

        started = time.perf_counter()
        engine.submit(prompt, Sampling(max_tokens=NEW_TOKENS, temperature=0), emit)
        done.wait(600)
        made = max(len(stamps) - 1, 1)
        return stamps[0] - started, made / max(stamps[-1] - stamps[0], 1e-9)

    return run, engine
