"""The padding-free encoder: the same numbers as the padded Hugging Face model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimserve.core.errors import ModelLoadError

pytest.importorskip("transformers")


def ragged_batch(vocab: int, lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    width = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids * mask, mask


def keep_heads(attention: torch.nn.Module, heads: list[int]) -> None:
    """Head pruning as slimserve's structured pruning leaves a layer: narrower q/k/v
    rows and output columns, and the head count the module says it has."""
    own = attention.self
    size = own.attention_head_size
    rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads])

    def narrowed(linear: torch.nn.Linear, dim: int) -> torch.nn.Linear:
        weight = linear.weight.data.index_select(dim, rows)
        new = torch.nn.Linear(weight.shape[1], weight.shape[0])
        new.weight.data = weight.clone()
        new.bias.data = linear.bias.data[rows].clone() if dim == 0 else linear.bias.data.clone()
        return new

    for name in ("query", "key", "value"):
        setattr(own, name, narrowed(getattr(own, name), 0))
    attention.output.dense = narrowed(attention.output.dense, 1)
    own.num_attention_heads = len(heads)
    own.all_head_size = len(heads) * size


@pytest.mark.parametrize(("pruned_heads", "token_bucket"), [(False, 1), (True, 1), (False, 8)])
def test_unpadded_encoder_equals_the_padded_model(
    tiny_bert: Path, pruned_heads: bool, token_bucket: int
) -> None:
    from transformers import BertModel

    from slimserve.models.hf import additive_mask
    from slimserve.models.unpadded import UnpaddedEncoder

    model = BertModel.from_pretrained(tiny_bert, attn_implementation="eager").eval()
    if pruned_heads:  # layers with different head counts: the forward reads each layer's
        keep_heads(model.encoder.layer[0].attention, [0, 3])
        keep_heads(model.encoder.layer[1].attention, [1, 2, 3])
    ids, mask = ragged_batch(model.config.vocab_size, (3, 11, 1, 7))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=additive_mask(mask))[0]
        got = UnpaddedEncoder(model, token_bucket)(ids, mask)
    real = mask.bool()
    assert got.shape == expected.shape
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    assert float(got[~real].abs().max()) == 0.0  # padding positions carry nothing


@pytest.mark.parametrize(
    ("lengths", "bucket", "rows"), [((3, 11, 1, 7), 8, 24), ((3, 11, 1, 7), 1, 22), ((2, 3), 16, 6)]
)
def test_the_linear_layers_run_on_a_multiple_of_the_token_bucket(
    tiny_bert: Path, lengths: tuple[int, ...], bucket: int, rows: int
) -> None:
    """22 real tokens in a 4 x 11 batch run as 24 rows with buckets of 8; a batch with
    fewer positions than the bucket runs on all its positions."""
    from transformers import BertModel

    from slimserve.models.unpadded import UnpaddedEncoder

    model = BertModel.from_pretrained(tiny_bert, attn_implementation="eager").eval()
    seen: list[int] = []
    query = model.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    ids, mask = ragged_batch(model.config.vocab_size, lengths)
    with torch.no_grad():
        UnpaddedEncoder(model, bucket)(ids, mask)
    assert seen == [rows]


def test_a_model_without_bert_layers_is_refused_by_name() -> None:
    from slimserve.models.unpadded import UnpaddedEncoder

    with pytest.raises(ModelLoadError, match="BERT-style model .*Drop the 'unpad' step"):
        UnpaddedEncoder(torch.nn.Linear(4, 4))


def test_no_padding_gives_the_same_result_as_padding(tiny_bert: Path) -> None:
    from transformers import BertModel

    from slimserve.models.unpadded import UnpaddedEncoder

    model = BertModel.from_pretrained(tiny_bert, attn_implementation="eager").eval()
    encoder = UnpaddedEncoder(model)
    ids, mask = ragged_batch(model.config.vocab_size, (6, 6))
    padded_ids = torch.cat([ids, torch.zeros(2, 4, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=mask.dtype)], 1)
    with torch.no_grad():
        short = encoder(ids, mask).numpy()
        long = encoder(padded_ids, padded_mask).numpy()
    np.testing.assert_allclose(long[:, :6], short, atol=1e-5)
