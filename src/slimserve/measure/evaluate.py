"""Quality of a model on a data split: its outputs scored against labels or a reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from slimserve.core.metrics import score
from slimserve.runtime import predict_all

if TYPE_CHECKING:
    from slimserve.data import Dataset
    from slimserve.runtime import Predictor


def evaluate(
    predictor: Predictor,
    data: Dataset,
    reference: np.ndarray | None = None,
    k: int = 5,
    custom: str | None = None,
) -> dict[str, float]:
    """Accuracy (and top-k accuracy) when the data has labels; fidelity when reference
    outputs are given; plus a custom ``"module:function"`` metric, called as
    ``function(outputs, labels)`` and returning a number or a dict of numbers."""
    outputs = predict_all(predictor, data)
    return score(outputs, data.labels, reference, k, predictor.output_names, custom)


__all__ = ["evaluate"]
