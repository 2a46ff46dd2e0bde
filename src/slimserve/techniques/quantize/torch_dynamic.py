"""Dynamic int8 for PyTorch serving: ``nn.Linear`` layers with int8 weights.

For users who serve PyTorch rather than ONNX. torch 2.13 still ships torch.ao's
``quantize_dynamic`` (deprecated in favour of torchao), so that is what runs, with
per-channel weight scales: the quantized layer's ``weight()`` returns a
``torch.Tensor`` of dtype ``torch.qint8`` (``.dequantize()`` gives the float values),
exactly as users of ``torch.ao.quantization.quantize_dynamic`` know it.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from slimserve.core.errors import MissingExtraError


def quantize_dynamic_torch(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every ``nn.Linear`` with a dynamically quantized int8 Linear (CPU)."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # a torch without torch.ao: torchao is the successor
        raise MissingExtraError("torchao", "torchao", "PyTorch dynamic quantization") from exc
    import torch

    target = module if inplace else copy.deepcopy(module)
    target.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, once per layer
        quantized: nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            target, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    return quantized
