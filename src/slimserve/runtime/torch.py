"""PyTorch predictors: an eager module or a saved torch program, under ``inference_mode``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from slimserve.runtime.names import check_names

if TYPE_CHECKING:
    import torch

    from slimserve.models.torch import TorchModel


class TorchPredictor:
    """A torch module run under ``inference_mode`` with a fixed thread count."""

    def __init__(self, model: TorchModel, threads: int = 2) -> None:
        import torch

        self.model = model
        self.threads = threads
        self.input_names = model.input_names
        self.output_names = model.output_names
        from slimserve.models.torch import as_eval

        as_eval(model.module)
        self._torch = torch

    def predict(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        check_names(self.input_names, inputs)
        torch.set_num_threads(self.threads)
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names]
        with torch.inference_mode():
            out = self.model.module(*args)
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.detach().float().numpy() for o in outs]


def load_program(data: bytes, where: str) -> torch.nn.Module:
    """The runnable module of a saved ``.pt2`` program, read without unpickling or running
    anything it carries (``models.program.read_program``); ``where`` names it in errors."""
    from slimserve.models.program import read_program

    return read_program(data, where).module()
