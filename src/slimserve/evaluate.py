"""Quality metrics: accuracy with labels, fidelity against a reference without."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.runtime import Predictor


def cosine(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two output batches (flattened per row)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    dot = (ref * cand).sum(axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    # Two all-zero rows are identical; one all-zero row is orthogonal to anything.
    both_zero = norms == 0
    safe = np.where(both_zero, 1.0, norms)
    result: np.ndarray = np.where(
        both_zero, np.all(ref == cand, axis=1).astype(np.float64), dot / safe
    )
    return result


def fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Cosine mean/min, max abs error and (for 2-D outputs) top-1 agreement."""
    cos = cosine(reference, candidate)
    result = {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_error": float(np.abs(reference.astype(np.float64) - candidate).max()),
    }
    if reference.ndim == 2 and reference.shape[1] > 1:
        agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
        result["top1_agreement"] = float(agree.mean())
    return result


def predict_all(predictor: Predictor, data: Dataset, batch_size: int = 256) -> np.ndarray:
    """The first output of the model over a whole dataset, batch by batch."""
    outputs = [predictor.predict(batch.inputs)[0] for batch in data.batches(batch_size)]
    return np.concatenate(outputs)


def evaluate(
    predictor: Predictor, data: Dataset, reference: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy when the data has labels; fidelity when reference outputs are given."""
    outputs = predict_all(predictor, data)
    metrics: dict[str, float] = {}
    if data.labels is not None:
        metrics["accuracy"] = float((outputs.argmax(axis=1) == data.labels).mean())
    if reference is not None:
        metrics.update(fidelity(reference, outputs))
    return metrics
