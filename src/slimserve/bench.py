"""Latency, throughput and size, with models timed interleaved in one run.

Interleaving (A, B, A, B, ...) exposes every model to the same machine noise, so the
ratios between them hold even on a busy machine; medians and tails, never one run.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.models import Model
    from slimserve.runtime import Predictor


@dataclass(frozen=True)
class Timing:
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    items_per_s: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def model_bytes(model: Model) -> bytes:
    """The model as stored: ONNX protobuf, or a torch state dict as safetensors."""
    from slimserve.models import OnnxModel

    if isinstance(model, OnnxModel):
        return model.to_bytes()
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.module.state_dict().items()}
    return bytes(save(state))


def model_size(model: Model) -> tuple[int, int]:
    """(raw bytes, gzip-compressed bytes): zeros from pruning show in the second."""
    raw = model_bytes(model)
    return len(raw), len(gzip.compress(raw, compresslevel=6, mtime=0))


def sample_batch(data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """A batch of exactly ``batch_size`` samples, repeating the data if it is short."""
    reps = -(-batch_size // len(data))
    return {k: np.concatenate([v] * reps)[:batch_size] for k, v in data.inputs.items()}


def bench_interleaved(
    predictors: dict[str, Predictor],
    data: Dataset,
    batch_sizes: tuple[int, ...] = (1, 32),
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, dict[int, Timing]]:
    """Time every predictor at every batch size, one call each in turn per round."""
    names = list(predictors)
    samples: dict[int, dict[str, np.ndarray]] = {b: sample_batch(data, b) for b in batch_sizes}
    result: dict[str, dict[int, Timing]] = {n: {} for n in names}
    for batch_size in batch_sizes:
        feeds = {n: _named(samples[batch_size], predictors[n].input_names) for n in names}
        for name in names:
            for _ in range(warmup):
                predictors[name].predict(feeds[name])
        times: dict[str, list[float]] = {n: [] for n in names}
        for round_index in range(repeats):
            # Rotate who goes first so no model always runs right after another's cache use.
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for name in order:
                start = time.perf_counter()
                predictors[name].predict(feeds[name])
                times[name].append(time.perf_counter() - start)
        for name in names:
            ms = np.array(times[name]) * 1e3
            p50 = float(np.percentile(ms, 50))
            result[name][batch_size] = Timing(
                batch_size,
                p50,
                float(np.percentile(ms, 95)),
                float(np.percentile(ms, 99)),
                batch_size / (p50 / 1e3),
            )
    return result


def _named(batch: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    if set(batch) == set(names) or len(batch) != len(names):
        return batch
    return dict(zip(names, batch.values(), strict=True))
