import torch

import slimserve as ss


def test_linear_layers_become_int8(digits_torch, digits_test) -> None:  # type: ignore[no-untyped-def]
    quantized = ss.quantize_dynamic_torch(digits_torch.module)
    weight = quantized.fc1.weight()
    assert isinstance(weight, torch.Tensor)
    assert weight.dtype == torch.qint8 and weight.qscheme() == torch.per_channel_affine
    assert weight.dequantize().dtype == torch.float32
    assert isinstance(digits_torch.module.fc1, torch.nn.Linear)  # the original is untouched
    x = torch.from_numpy(digits_test.inputs["input"])
    with torch.no_grad():
        agree = (quantized(x).argmax(1) == digits_torch.module(x).argmax(1)).float().mean()
    assert agree > 0.99
