"""Mask functions shared by the PyTorch and Keras pruning paths."""

from __future__ import annotations

import pytest
import torch

from slimserve.core.errors import SlimserveError
from slimserve.techniques.prune.masks import block_mask


@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
def test_block_mask_keeps_or_drops_whole_blocks(pooling: str) -> None:
    weight = torch.randn(10, 7, generator=torch.Generator().manual_seed(0))
    mask = block_mask(weight, 0.5, (2, 3), pooling)  # type: ignore[arg-type]
    assert mask.shape == weight.shape
    # 5 x 3 blocks, the last column of blocks is 1 wide (SAME padding, as TF-MOT)
    padded = torch.nn.functional.pad(mask, (0, 2)).reshape(5, 2, 3, 3)
    zeroed = 0
    for row in range(5):
        for col in range(3):
            block = padded[row, :, col, :][:, : 3 if col < 2 else 1]
            assert block.min() == block.max()
            zeroed += int(block.max() == 0)
    assert zeroed == 7  # 15 blocks, round(15 * 0.5) = 8 kept, as TF-MOT counts blocks


def test_block_mask_prefers_blocks_of_large_weights() -> None:
    weight = torch.ones(4, 4) * 0.01
    weight[:2, 2:] = 5.0  # one block of large weights
    mask = block_mask(weight, 0.75, (2, 2))
    assert torch.equal(mask[:2, 2:], torch.ones(2, 2))
    assert float(mask.sum()) == 4


def test_block_mask_needs_a_2d_weight() -> None:
    with pytest.raises(SlimserveError, match="2-D weight"):
        block_mask(torch.ones(2, 2, 3), 0.5, (2, 2))
