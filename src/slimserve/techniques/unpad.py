"""``unpad``: a Hugging Face text encoder whose linear layers skip padding (torch -> torch,
before ``export``). See ``slimserve.models.unpadded`` for how, and BENCHMARKS.md (minilm)
for what it buys: it grows with the share of padding in the batches served."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from slimserve.core.context import Context
from slimserve.core.errors import ExportError
from slimserve.models.hf import TaskModel
from slimserve.models.torch import TorchModel
from slimserve.models.unpadded import UnpaddedEncoder


class UnpadConfig(BaseModel):
    """Run the encoder's projections, feed-forward and layer norms on real tokens only
    (attention per sequence); outputs equal the padded model's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "unpad"
    accepts: ClassVar[tuple[str, ...]] = ("torch",)
    produces: ClassVar[str] = "torch"
    trains: ClassVar[bool] = False

    atol: float = Field(1e-4, gt=0, description="Parity: largest allowed max abs error.")
    token_bucket: int = Field(
        16,
        ge=1,
        le=512,
        description="Round the rows the linear layers run on up to a multiple of this "
        "(padding fills the rest): runtimes that compile kernels per shape (OpenVINO) "
        "then reuse them across batches. 1: real tokens only.",
    )

    def describe(self) -> str:
        """A short label for tables."""
        return "padding-free encoder"

    def apply(self, model: TorchModel, ctx: Context) -> TorchModel:
        module = model.module
        if not isinstance(module, TaskModel) or not module.pool:
            raise ExportError(
                "unpad works on Hugging Face feature-extraction models (model: {hf: DIR} "
                "or an example text model): their output is pooled over real tokens. "
                "Drop the 'unpad' step for this model."
            )
        if module.encoder is not None:
            return model
        try:
            encoder = UnpaddedEncoder(module.model, self.token_bucket)
        except Exception as exc:
            raise ExportError(str(exc)) from None
        unpadded = TaskModel(module.model, pool=True, encoder=encoder).eval()
        data = ctx.split("calibration", "eval", "train")
        if data is not None:
            sample = data.renamed(model.input_names).take(16).inputs
            args = tuple(torch.from_numpy(sample[n]) for n in model.input_names)
            with torch.no_grad():
                error = float((module(*args) - unpadded(*args)).abs().max())
            if error > self.atol:
                raise ExportError(
                    f"The padding-free encoder differs from the model by {error:.3g} "
                    f"(allowed {self.atol:g}): its layers are not BERT's. Drop the "
                    "'unpad' step for this model."
                )
            ctx.log.details["unpad_max_abs_error"] = error
            mask = np.asarray(data.inputs.get("attention_mask", np.ones(1)))
            ctx.log.notes.append(
                f"Padding-free: {1 - mask.mean():.0%} of the calibration tensor is padding "
                "(padded to its longest); the linear layers run on real tokens only."
            )
        return model.with_module(unpadded)
