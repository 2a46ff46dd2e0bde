"""The model states: ``TorchModel`` (an nn.Module + example inputs + I/O names; a causal
LM is one with ``task="text-generation"``), ``OnnxModel`` and ``LlmModel`` (a decoder LM
built for a generation runtime). Each format's loader is a module here;
``slimserve.loading.load_model`` is the one entry point that picks among them (and reads
artifact folders)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimserve.models.llm import LlmModel
from slimserve.models.onnx import OnnxModel

if TYPE_CHECKING:
    from slimserve.models.torch import TorchModel

    Model = TorchModel | OnnxModel
    AnyModel = TorchModel | OnnxModel | LlmModel  # what a step may take or give


def __getattr__(name: str) -> Any:
    # TorchModel (and Model, which names it) on first use: importing torch takes ~2 s
    # and ~200,000 objects, which serving an ONNX file never needs.
    if name in ("TorchModel", "Model", "AnyModel"):
        from slimserve.models.torch import TorchModel

        globals().update(
            TorchModel=TorchModel,
            Model=TorchModel | OnnxModel,
            AnyModel=TorchModel | OnnxModel | LlmModel,
        )
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AnyModel", "LlmModel", "Model", "OnnxModel", "TorchModel"]
