"""Latency, throughput and size, with models timed interleaved in one run.

Interleaving (A, B, A, B, ...) exposes every model to the same machine noise, so the
ratios between them hold even on a busy machine; medians and tails, never one run.
The rounds, the contention check and the paired ratios are ``slimserve.measure.timing``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.measure.timing import Ratio
    from slimserve.models import Model
    from slimserve.runtime import Predictor


@dataclass(frozen=True)
class Timing:
    batch_size: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    items_per_s: float
    spread: float = 0.0  # (p75 - p25) / p50 of the per-round medians
    contention: float = 0.0  # the largest share of the CPU other processes took in a pass
    contended: bool = False  # a pass stayed contended after its retries: not a result
    rounds_ms: tuple[float, ...] = ()  # each round's median, for paired ratios

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (v if isinstance(v, bool) else list(v) if isinstance(v, tuple) else float(v))
            for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Timing:
        """A Timing as stored in a manifest or bench JSON (older ones lack the rounds)."""
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        fields["rounds_ms"] = tuple(fields.get("rounds_ms", ()))
        return cls(**fields)

    def speedup_over(self, baseline: Timing) -> Ratio:
        """Paired per-round throughput ratio against ``baseline`` (same run)."""
        from slimserve.measure.timing import Timed, speedup

        def timed(t: Timing) -> Timed:
            rounds = tuple(r / 1e3 for r in t.rounds_ms) or (t.p50_ms / 1e3,)
            return Timed((), rounds, (t.contention,))

        return speedup(timed(self), timed(baseline))


def sample_batch(data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """A batch of exactly ``batch_size`` samples, repeating the data if it is short.
    Text (a 2-D ``attention_mask``) is cut to the batch's own longest sentence, as a
    server pads it, not to the longest of the whole data set."""
    from slimserve.data import padded_width

    reps = -(-batch_size // len(data))
    batch = {k: np.concatenate([v] * reps)[:batch_size] for k, v in data.inputs.items()}
    mask = batch.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        length, width = mask.shape[1], padded_width(mask)
        batch = {
            k: v[:, :width] if v.ndim == 2 and v.shape[1] == length else v for k, v in batch.items()
        }
    return batch


def bench_interleaved(
    predictors: dict[str, Predictor],
    data: Dataset,
    batch_sizes: tuple[int, ...] = (1, 32),
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, dict[int, Timing]]:
    """Time every predictor at every batch size in interleaved rounds (``timing``):
    about ``repeats`` calls each, in up to 10 rounds, every pass checked for contention."""
    from slimserve.measure.timing import run_rounds

    names = list(predictors)
    samples: dict[int, dict[str, np.ndarray]] = {b: sample_batch(data, b) for b in batch_sizes}
    result: dict[str, dict[int, Timing]] = {n: {} for n in names}
    rounds = max(3, min(repeats, 10))
    for batch_size in batch_sizes:
        feeds = {n: _named(samples[batch_size], predictors[n].input_names) for n in names}
        calls = {n: _call(predictors[n], feeds[n]) for n in names}
        timed = run_rounds(calls, rounds, max(1, repeats // rounds), warmup)
        for name in names:
            ms = np.array(timed[name].calls_s) * 1e3
            p50 = float(np.percentile(ms, 50))
            result[name][batch_size] = Timing(
                batch_size,
                p50,
                float(np.percentile(ms, 95)),
                float(np.percentile(ms, 99)),
                batch_size / (p50 / 1e3),
                timed[name].spread,
                max(timed[name].contention),
                timed[name].contended,
                tuple(r * 1e3 for r in timed[name].round_s),
            )
    return result


def _call(predictor: Predictor, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: predictor.predict(feed)


def _named(batch: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    if set(batch) == set(names) or len(batch) != len(names):
        return batch
    return dict(zip(names, batch.values(), strict=True))


BENCH_SCHEMA_VERSION = 1


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def synthetic_data(model: Model, count: int = 64, seed: int = 0) -> Dataset:
    """Random inputs shaped like the model's (dynamic first axis = ``count``); other
    symbolic dims need real data."""
    from slimserve.core.errors import DataError
    from slimserve.data import Dataset
    from slimserve.measure.summary import summarize

    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in summarize(model).inputs:
        shape = list(spec["shape"])
        if not shape:
            raise DataError(f"Input '{spec['name']}' has no known shape; give data with --data.")
        if not isinstance(shape[0], int) or shape[0] <= 0:
            shape[0] = count
        if any(not isinstance(d, int) for d in shape[1:]):
            raise DataError(
                f"Input '{spec['name']}' has symbolic dimensions {spec['shape']}; give real "
                "data with --data so the benchmark uses realistic shapes."
            )
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            inputs[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        else:
            inputs[spec["name"]] = np.zeros(shape, dtype=dtype)
    return Dataset(inputs)


@dataclass(frozen=True)
class BenchEntry:
    name: str
    size_bytes: int
    compressed_bytes: int
    rss_bytes: int
    timings: dict[int, Timing]


def bench_models(
    models: dict[str, Model],
    data: Dataset | None,
    batch_sizes: tuple[int, ...] = (1, 32),
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 100,
) -> list[BenchEntry]:
    """Every model's size, memory and timings, measured interleaved in one run."""
    from slimserve.measure.timing import TIMED_SPINNING
    from slimserve.runtime import load_predictor

    predictors, memory = {}, {}
    first = next(iter(models.values()))
    data = data if data is not None else synthetic_data(first)
    for name, model in models.items():
        before = rss_bytes()
        predictors[name] = load_predictor(model, threads, spinning=TIMED_SPINNING)
        predictors[name].predict(_named(sample_batch(data, 1), predictors[name].input_names))
        memory[name] = max(0, rss_bytes() - before)
    timings = bench_interleaved(predictors, data, batch_sizes, warmup, repeats)
    from slimserve.measure.summary import model_size

    entries = []
    for name, model in models.items():
        raw, compressed = model_size(model)
        entries.append(BenchEntry(name, raw, compressed, memory[name], timings[name]))
    return entries


def bench_json(entries: list[BenchEntry], threads: int, repeats: int) -> dict[str, object]:
    """The machine-readable report: ratios are against the first model; ``cpu_features``
    names the CPU the figures were measured on (the one feature probe)."""
    from slimserve.core.cpu import cpu_features

    base = entries[0]
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "cpu_features": sorted(cpu_features()),
        "threads": threads,
        "repeats": repeats,
        "baseline": base.name,
        "models": [
            {
                "name": e.name,
                "size_bytes": e.size_bytes,
                "compressed_bytes": e.compressed_bytes,
                "rss_bytes": e.rss_bytes,
                "size_ratio": e.size_bytes / base.size_bytes,
                "timings": {
                    str(b): {
                        **t.as_dict(),
                        **_ratio_fields(t.speedup_over(base.timings[b])),
                    }
                    for b, t in e.timings.items()
                },
            }
            for e in entries
        ],
    }


def ratio_cell(timing: dict[str, Any]) -> str:
    """A bench JSON timing's speed-up as a table shows it: the ratio, or what it is not."""
    if timing.get("contended"):
        return "contended"
    if not timing.get("speedup_measurable", True):
        return "no measurable difference"
    return f"{timing['speedup']:.2f}x"


def _ratio_fields(ratio: Ratio) -> dict[str, float | bool | str]:
    return {
        "speedup": ratio.median,
        "speedup_low": ratio.low,
        "speedup_high": ratio.high,
        "speedup_measurable": ratio.measurable and not ratio.contended,
        "speedup_text": ratio.describe(),
    }
