"""Quality metrics on arrays (pure numpy): accuracy with labels, fidelity against a
reference's outputs without. Running a model over data is ``slimserve.runtime.predict_all``;
``slimserve.measure.evaluate.evaluate`` does both."""

from __future__ import annotations

import numpy as np

from slimserve.core.callables import resolve_callable
from slimserve.core.errors import DataError, SlimserveError


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


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores per row (unordered)."""
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


EMBEDDING_OUTPUTS = ("embedding", "embeddings")
NEIGHBOUR_ROWS = 2048  # the neighbour search is quadratic in rows


def is_embedding_output(output_names: tuple[str, ...]) -> bool:
    """Whether a model's first output is an embedding (named as Hugging Face
    feature-extraction models' is), where only the direction counts."""
    return bool(output_names) and output_names[0] in EMBEDDING_OUTPUTS


def nearest_neighbours(embeddings: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of each row's k most cosine-similar other rows, most similar first."""
    flat = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def neighbour_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> float:
    """The share of each row's k nearest neighbours (by cosine, among the first
    NEIGHBOUR_ROWS rows) under the reference that the candidate keeps: what a search or
    deduplication over the embeddings would see change."""
    ref, cand = reference[:NEIGHBOUR_ROWS], candidate[:NEIGHBOUR_ROWS]
    pairs = zip(nearest_neighbours(ref, k), nearest_neighbours(cand, k), strict=True)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in pairs]))


def fidelity(
    reference: np.ndarray, candidate: np.ndarray, k: int = 5, embeddings: bool = False
) -> dict[str, float]:
    """Cosine mean/min, max abs error and, for 2-D scores, top-1 and top-k agreement
    (the share of the reference's k best classes that the candidate also ranks top-k).
    For ``embeddings``, whose largest coordinate means nothing, top-k neighbour agreement
    (``top{k}_neighbours``) instead."""
    cos = cosine(reference, candidate)
    result = {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_error": float(np.abs(reference.astype(np.float64) - candidate).max()),
    }
    if embeddings:
        if len(reference) > k:
            result[f"top{k}_neighbours"] = neighbour_agreement(reference, candidate, k)
        return result
    if reference.ndim == 2 and reference.shape[1] > 1:
        agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
        result["top1_agreement"] = float(agree.mean())
        if reference.shape[1] > k:
            ref_k, cand_k = top_k(reference, k), top_k(candidate, k)
            overlap = [len(set(a) & set(b)) for a, b in zip(ref_k, cand_k, strict=True)]
            result[f"top{k}_agreement"] = float(np.mean(overlap) / k)
    return result


def score(
    outputs: np.ndarray,
    labels: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    k: int = 5,
    output_names: tuple[str, ...] = (),
    custom: str | None = None,
) -> dict[str, float]:
    """Accuracy (and top-k accuracy) when there are labels; fidelity when reference
    outputs are given; plus a custom ``"module:function"`` metric, called as
    ``function(outputs, labels)`` and returning a number or a dict of numbers. Fidelity of
    an embedding (``output_names`` says so) compares neighbours, not top classes."""
    metrics: dict[str, float] = {}
    if labels is not None:
        if outputs.ndim != 2:
            raise DataError(
                f"Accuracy needs class scores of shape (batch, classes); the model gives "
                f"{outputs.shape}. Evaluate it against a reference model instead."
            )
        metrics["accuracy"] = float((outputs.argmax(axis=1) == labels).mean())
        if outputs.shape[1] > k:
            hits = (top_k(outputs, k) == labels[:, None]).any(axis=1)
            metrics[f"top{k}_accuracy"] = float(hits.mean())
    if reference is not None:
        if reference.shape != outputs.shape:
            raise DataError(
                f"The reference model's outputs have shape {reference.shape} but the model's "
                f"have {outputs.shape}: they are not comparable."
            )
        metrics.update(fidelity(reference, outputs, k, is_embedding_output(output_names)))
    if custom is not None:
        metrics.update(_custom_metric(custom, outputs, labels))
    return metrics


def _custom_metric(spec: str, outputs: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    try:
        fn = resolve_callable(spec)
    except SlimserveError as exc:
        raise DataError(str(exc)) from exc
    value = fn(outputs, labels)
    name = spec.rpartition(":")[2]
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    try:
        return {name: float(value)}
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"Custom metric '{spec}' returned {type(value).__name__}; return a number or a "
            "dict of numbers."
        ) from exc


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (stable: the row's maximum subtracted first)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def next_token_metrics(
    reference: np.ndarray, logits: np.ndarray, targets: np.ndarray
) -> dict[str, float]:
    """What llama.cpp's ``--kl-divergence`` reports, for ``logits`` [positions, vocab]
    against the float model's ``reference`` logits at the same positions, whose next tokens
    are ``targets``: the model's perplexity on them, the mean KL divergence KL(P_ref || P),
    and how often both models rank the same token first."""
    if reference.shape != logits.shape or logits.shape[0] != len(targets):
        raise DataError(
            f"Logits {logits.shape}, reference {reference.shape} and {len(targets)} targets "
            "do not describe the same positions."
        )
    log_p, log_q = log_softmax(reference), log_softmax(logits)
    rows = np.arange(len(targets))
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    return {
        "perplexity": float(np.exp(-log_q[rows, targets].mean())),
        "kl_divergence": float(max(kl.mean(), 0.0)),
        "top1_agreement": float((reference.argmax(-1) == logits.argmax(-1)).mean()),
    }
