"""What every predictor shares: checking the input names it was given."""

from __future__ import annotations

import numpy as np

from slimserve.core.errors import DataError


def check_names(expected: tuple[str, ...], inputs: dict[str, np.ndarray]) -> None:
    if set(inputs) != set(expected):
        raise DataError(
            f"The model takes inputs {list(expected)} but got {list(inputs)}. "
            "Name the input arrays after the model's inputs."
        )
