"""all-MiniLM-L6-v2: the one-line recipes a user would try (the anchors), against a
slimserve artifact, interleaved in one run. Used by ``slimserve demo minilm`` and
``benchmarks/minilm.py``.

Anchors: PyTorch fp32 eager (transformers' default attention, mean pooling), PyTorch
bf16 eager, ONNX Runtime fp32 on a plain export, ONNX Runtime dynamic int8 per-channel
on the fused graph and, with the ``[openvino]`` extra, OpenVINO on the plain export (its
default precision: bf16 float layers where the CPU has AVX512-BF16 or AMX) and OpenVINO
after NNCF static int8 as sentence-transformers' ``export_static_quantized_openvino_model``
does it (``model_type=TRANSFORMER``; calibrated here on the 256 ``english`` calibration
sentences, where sentence-transformers takes 300 GLUE sentences).

Batch 32 of real English sentences (the 256 held-out ``english`` eval sentences, never
used for calibration), each batch padded to its own longest sentence; batch 1 over the
first 48 of them. Fidelity against PyTorch fp32: cosine
mean/min and top-5 neighbour agreement (each sentence's 5 nearest others), and the cosine
on the ``english`` example's ``other`` split, sentences from another source (scikit-learn's
dataset descriptions) than every split calibration and distillation draw from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimserve.core.errors import MissingExtraError
from slimserve.core.metrics import fidelity

# ONNX Runtime sessions do not spin: one that spins after its call takes the CPU from
# the next candidate's (measure.timing.TIMED_SPINNING, as the pipeline times stages).
from slimserve.measure.timing import TIMED_SPINNING, Timed, run_rounds

Run = Callable[[dict[str, np.ndarray]], np.ndarray]
HEADERS = [
    "recipe",
    "size",
    "b1 p50 ms",
    "b1 p95 ms",
    "b32 sentences/s",
    "short b1 p50 ms",
    "short b32 sentences/s",
    "cosine mean/min",
    "top-5 neighbours",
    "cosine, other source",
]
ARTIFACT = "slimserve artifact"
SHORT_TOKENS = 28  # short text: the eval sentences of at most this many tokens
GROUPED = "slimserve artifact, batches grouped by length"


@dataclass
class Comparison:
    rows: list[list[str]]
    verdict: str
    padding: str


def torch_runner(dtype: torch.dtype) -> tuple[Run, int]:
    """transformers' AutoModel as a user loads it (default attention), mean pooling."""
    from transformers import AutoModel

    from slimserve.examples.minilm import model_folder
    from slimserve.models.hf import offline

    with offline():
        model = AutoModel.from_pretrained(model_folder(), local_files_only=True).eval()
    model = model.to(dtype)
    size = sum(p.numel() * p.element_size() for p in model.parameters())

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            hidden = model(**tensors)[0].float()
            mask = tensors["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            result: np.ndarray = torch.nn.functional.normalize(pooled, dim=1).numpy()
            return result

    return run, size


def predictor_runner(predictor: Any, size: int) -> tuple[Run, int]:
    names = predictor.input_names

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = predictor.predict({n: feeds[n] for n in names})[0]
        return result

    return run, size


def anchors(threads: int = 2) -> dict[str, tuple[Run, int]]:
    """The four anchors, built as a user would (export, fuse, quantize for the ORT ones)."""
    from slimserve.core.context import Context
    from slimserve.core.specs import ModelSpec
    from slimserve.data import Dataset, english_split
    from slimserve.examples.minilm import model_folder
    from slimserve.loading import load_model
    from slimserve.models.hf import load_tokenizer, tokenize
    from slimserve.models.torch import TorchModel
    from slimserve.runtime import OrtPredictor
    from slimserve.techniques.export import ExportConfig
    from slimserve.techniques.fuse import FuseConfig
    from slimserve.techniques.quantize.configs import DynamicQuantizeConfig
    from slimserve.techniques.quantize.ort import quantize_onnx

    tokenizer = load_tokenizer(model_folder())
    hf_model = load_model(ModelSpec(example="minilm"))
    assert isinstance(hf_model, TorchModel)
    plain = ExportConfig().apply(hf_model, Context())
    calibration = Dataset(tokenize(tokenizer, english_split("calibration")[:32], 256))
    fused = FuseConfig().apply(plain, Context(data={"calibration": calibration}))
    int8 = quantize_onnx(fused, DynamicQuantizeConfig(per_channel=True))
    found = {
        "PyTorch fp32 eager": torch_runner(torch.float32),
        "PyTorch bf16 eager": torch_runner(torch.bfloat16),
        "ORT fp32, plain export": predictor_runner(
            OrtPredictor(plain, threads, TIMED_SPINNING), len(plain.to_bytes())
        ),
        "ORT dynamic int8 per-channel, fused graph": predictor_runner(
            OrtPredictor(int8, threads, TIMED_SPINNING), len(int8.to_bytes())
        ),
    }
    # Without the [openvino] extra the table has the other anchors.
    with contextlib.suppress(MissingExtraError):
        found.update(openvino_anchors(plain, tokenizer, threads))
    return found


def openvino_anchors(plain: Any, tokenizer: Any, threads: int) -> dict[str, tuple[Run, int]]:
    """OpenVINO on the plain export, and OpenVINO after NNCF static int8 (what
    sentence-transformers' ``export_static_quantized_openvino_model`` does)."""
    from dataclasses import replace

    from slimserve.core.errors import require
    from slimserve.data import english_split
    from slimserve.models.hf import tokenize
    from slimserve.runtime.openvino import OvPredictor

    ov: Any = require("openvino", "openvino", "The OpenVINO anchors")
    nncf: Any = require("nncf", "openvino", "The OpenVINO + NNCF anchor")
    fp32 = OvPredictor(replace(plain, engine="openvino"), threads)
    core = ov.Core()
    read = core.read_model(model=plain.to_bytes(), weights=b"")
    sentences = english_split("calibration")
    samples = [tokenize(tokenizer, [s], 256) for s in sentences]
    quantized = nncf.quantize(
        read,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
    )
    compiled = core.compile_model(
        quantized,
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1},
    )
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]

    def run_int8(feeds: dict[str, np.ndarray]) -> np.ndarray:
        result = request.infer({n: feeds[n] for n in names})
        return np.array(result[compiled.outputs[0]])

    int8_size = _openvino_size(ov, quantized)
    return {
        f"OpenVINO {fp32.inference_precision} (auto), plain export": predictor_runner(
            fp32, len(plain.to_bytes())
        ),
        "OpenVINO + NNCF static int8 (model_type=TRANSFORMER)": (run_int8, int8_size),
    }


def _openvino_size(ov: Any, model: Any) -> int:
    """Bytes of the model as OpenVINO saves it (IR .xml + .bin, weights compressed)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        ov.save_model(model, f"{folder}/model.xml")
        return sum(p.stat().st_size for p in Path(folder).iterdir())


def compare(
    artifact: Path, rounds: int = 3, threads: int = 2, log: Callable[[str], None] = print
) -> Comparison:
    """Time and score the anchors and ``artifact`` (served as its manifest says) together."""
    from slimserve.artifact import load_artifact
    from slimserve.data import english_split
    from slimserve.examples.minilm import model_folder
    from slimserve.models.hf import load_tokenizer, tokenize
    from slimserve.runtime import load_predictor

    torch.set_num_threads(threads)
    sentences = english_split("eval")
    tokenizer = load_tokenizer(model_folder())
    batches = [tokenize(tokenizer, sentences[i : i + 32], 256) for i in range(0, 256, 32)]
    other = english_split("other")  # fidelity only: a source nothing was tuned on
    other_batches = [tokenize(tokenizer, other[i : i + 32], 256) for i in range(0, len(other), 32)]
    singles = [tokenize(tokenizer, [s], 256) for s in sentences[:48]]
    # Short text (chat messages, queries): the eval sentences of <= SHORT_TOKENS tokens.
    short = [s for s in sentences if len(tokenizer(s)["input_ids"]) <= SHORT_TOKENS]
    short_mean = float(np.mean([len(tokenizer(s)["input_ids"]) for s in short]))
    short_singles = [tokenize(tokenizer, [s], 256) for s in short[:48]]
    short_batches = [
        tokenize(tokenizer, short[i : i + 32], 256) for i in range(0, len(short) - 31, 32)
    ]
    padded = sum(b["attention_mask"].size for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    # The same sentences batched as slimserve's server batches them: 32 at a time in
    # length order, each 32 split where lengths spread (merging.length_groups), so a
    # sentence pads to a similar one rather than to the longest of 32.
    from slimserve.serve.merging import length_groups

    lengths = [len(tokenizer(s)["input_ids"]) for s in sentences[:256]]
    order = np.argsort(lengths, kind="stable")
    grouped_order: list[int] = []
    grouped = []
    for i in range(0, 256, 32):
        chunk = [int(j) for j in order[i : i + 32]]
        for group in length_groups([lengths[j] for j in chunk]):
            members = [chunk[k] for k in group]
            grouped_order += members
            grouped.append(tokenize(tokenizer, [sentences[j] for j in members], 256))
    grouped_padded = sum(b["attention_mask"].size for b in grouped)

    log("Building the anchors (export, fuse, quantize)...")
    candidates = anchors(threads)
    loaded = load_artifact(artifact)
    small = loaded.manifest.small_batches
    served_files = {"model.pt2" if loaded.manifest.runtime == "torch" else "model.onnx"}
    served_files |= {small["file"]} if small else set()  # both builds count
    served_bytes = sum(r.bytes for name, r in loaded.manifest.files.items() if name in served_files)
    artifact_predictor = load_predictor(artifact, threads, spinning=TIMED_SPINNING)
    candidates[ARTIFACT] = predictor_runner(artifact_predictor, served_bytes)
    candidates[GROUPED] = candidates[ARTIFACT]
    reference = np.concatenate([candidates["PyTorch fp32 eager"][0](b) for b in batches])
    other_reference = np.concatenate(
        [candidates["PyTorch fp32 eager"][0](b) for b in other_batches]
    )
    outputs: dict[str, np.ndarray] = {}
    other_cosine: dict[str, np.ndarray] = {}
    for name, (run, _) in candidates.items():
        got = np.concatenate([run(b) for b in other_batches])
        other_cosine[name] = np.sum(got * other_reference, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(other_reference, axis=1)
        )
        outputs[name] = np.concatenate([run(b) for b in (grouped if name == GROUPED else batches)])
        if name == GROUPED:  # back to the reference's sentence order
            outputs[name] = outputs[name][np.argsort(grouped_order)]
    # One timing engine (measure.timing), candidates interleaved in rounds: a b32 call is
    # the next batch of 32 (a pass covers each batch once), a b1 call the next sentence.
    batched = {name: grouped if name == GROUPED else batches for name in candidates}
    b32 = run_rounds(
        {name: partial(_next, run, cycle(batched[name])) for name, (run, _) in candidates.items()},
        rounds,
        calls_per_pass=max(len(b) for b in batched.values()),
        warmup=10,
    )
    log("batch 32 timed")
    b1 = run_rounds(
        {name: partial(_next, run, cycle(singles)) for name, (run, _) in candidates.items()},
        rounds,
        calls_per_pass=len(singles),
        warmup=10,
    )
    log("batch 1 timed")
    timed_short = {name: v for name, v in candidates.items() if name != GROUPED}
    short_b1 = run_rounds(
        {name: partial(_next, run, cycle(short_singles)) for name, (run, _) in timed_short.items()},
        rounds,
        calls_per_pass=len(short_singles),
        warmup=10,
    )
    short_b32 = run_rounds(
        {name: partial(_next, run, cycle(short_batches)) for name, (run, _) in timed_short.items()},
        rounds,
        calls_per_pass=len(short_batches),
        warmup=10,
    )
    rows = []
    fp32_size = candidates["PyTorch fp32 eager"][1]
    for name, (_, size) in candidates.items():
        stats = fidelity(reference, outputs[name], k=5, embeddings=True)
        latencies_ms = np.array(b1[name].calls_s) * 1e3
        rows.append(
            [
                name,
                f"{size / 1e6:.1f} MB ({size / fp32_size:.0%})",
                f"{np.median(latencies_ms):.2f}",
                f"{np.percentile(latencies_ms, 95):.2f}",
                f"{_sentences_per_s(b32[name], 256 / len(batched[name])):.0f}",
                f"{np.median(np.array(short_b1[name].calls_s)) * 1e3:.2f}"
                if name in short_b1
                else "-",
                f"{_sentences_per_s(short_b32[name], 32):.0f}" if name in short_b32 else "-",
                f"{stats['cosine_mean']:.4f} / {stats['cosine_min']:.4f}",
                f"{stats['top5_neighbours']:.3f}",
                f"{other_cosine[name].mean():.4f} / {other_cosine[name].min():.4f}",
            ]
        )
    anchor_rows = [r for r in rows if not r[0].startswith("slimserve")]
    best_rate = max(float(r[4]) for r in anchor_rows)
    best_b1 = min(float(r[2]) for r in anchor_rows)
    best_short_b1 = min(float(r[5]) for r in anchor_rows)
    best_short_rate = max(float(r[6]) for r in anchor_rows)
    mine, grouped_row = rows[-2], rows[-1]
    verdict = (
        f"The slimserve artifact against the best anchor: b32 throughput "
        f"{float(mine[4]) / best_rate:.2f}x on the same batches, "
        f"{float(grouped_row[4]) / best_rate:.2f}x with batches grouped by length "
        f"(goal >= 1.5x); b1 p50 {float(mine[2]) / best_b1:.2f}x (goal <= 0.8x); on short "
        f"text ({len(short)} sentences of at most {SHORT_TOKENS} tokens, mean "
        f"{short_mean:.1f}) b1 p50 {float(mine[5]) / best_short_b1:.2f}x (goal <= 0.8x) and "
        f"b32 {float(mine[6]) / best_short_rate:.2f}x (goal >= 1.5x); cosine "
        f"mean/min {mine[7]} (goal mean >= 0.995), top-5 {mine[8]} (goal >= 0.95); on "
        f"the {len(other)} sentences of another source (scikit-learn's dataset "
        f"descriptions) cosine mean/min {mine[9]}."
    )
    padding = (
        f"Padding: {1 - real / padded:.0%} of the batch-32 tokens are padding in the "
        f"anchors' batches, {1 - real / grouped_padded:.0%} when grouped by length."
    )
    return Comparison(rows, verdict, padding)


def _sentences_per_s(timed: Timed, per_call: float) -> float:
    """The median over rounds of sentences / seconds for the round's calls."""
    calls = np.array(timed.calls_s).reshape(len(timed.round_s), -1)
    return float(np.median(calls.shape[1] * per_call / calls.sum(axis=1)))


def _next(run: Run, feeds: Iterator[dict[str, np.ndarray]]) -> None:
    run(next(feeds))
