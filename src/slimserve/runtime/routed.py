"""Two executables of one model in one predictor: a batch goes to the one built for
small batches while its rows x tokens stay within a crossover measured where the artifact
was built (``manifest.small_batches``), to the main one above it.

Why two: per call, ONNX Runtime's fused int8 graph costs little where OpenVINO's
padding-free graph has a fixed cost (its gather/scatter of real tokens, its infer
request), and OpenVINO's int8 kernels win once there is work; which one wins where is
measured, never assumed (BENCHMARKS.md, minilm)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from slimserve.runtime import Predictor


def batch_tokens(inputs: dict[str, np.ndarray]) -> int:
    """The work a batch is routed by: rows x tokens of its 2-D inputs (token ids and
    mask, padded to the batch's longest), rows alone for other inputs."""
    shapes = [v.shape for v in inputs.values() if v.ndim == 2]
    if shapes:
        return int(shapes[0][0] * shapes[0][1])
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


class RoutedPredictor:
    """``small`` for batches of at most ``max_tokens`` rows x tokens, ``large`` above."""

    def __init__(self, small: Predictor, large: Predictor, max_tokens: int) -> None:
        self.small, self.large, self.max_tokens = small, large, max_tokens
        self.input_names = large.input_names
        self.output_names = large.output_names
        self.calls = {"small": 0, "large": 0}  # how batches were routed (inspect, tests)

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if batch_tokens(inputs) <= self.max_tokens:
            self.calls["small"] += 1
            return self.small.predict(inputs)
        self.calls["large"] += 1
        return self.large.predict(inputs)
