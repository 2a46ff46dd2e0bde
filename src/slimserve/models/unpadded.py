"""A BERT-style encoder whose linear layers run on real tokens only.

A batch of sentences padded to its longest spends a third of its matrix work on padding
(34 % on the MiniLM eval text). Here the embeddings' output is gathered to the real
tokens ([tokens, hidden]); the Q/K/V projections, the attention output projection, the
feed-forward block and the layer norms run on those rows only, and only attention (per
sequence, where the mask needs the padded layout) scatters them back to [batch, length].
This is what text-embeddings-inference does on GPU with its packed kernels, written as
plain tensor ops (Gather, NonZero, CumSum) that every ONNX runtime runs on CPU.

The weights are the Hugging Face model's own modules: nothing is copied or retrained, so
the outputs equal the padded model's up to float rounding (a test checks 1e-5).

Token buckets: the rows the linear layers run on are rounded up to a multiple of
``token_bucket`` (padding positions fill the rest; attention masks them as keys and the
output zeroes them). A runtime that compiles kernels per shape (OpenVINO's CPU plugin
builds its kernels for each new row count: a stream of new shapes ran 1.77x slower,
BENCHMARKS.md, section shape_cache) then sees a few dozen row counts instead of one per
batch, and caches them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from slimserve.core.errors import ModelLoadError

ENCODER_PARTS = ("embeddings", "encoder")
LAYER_PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)


def _get(module: torch.nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def check_bert_like(encoder: torch.nn.Module) -> None:
    """A clear ModelLoadError unless ``encoder`` has BERT's module layout (BERT, MiniLM,
    RoBERTa, XLM-R, ELECTRA share it); the padding-free forward reuses those modules."""
    missing = [p for p in ENCODER_PARTS if not hasattr(encoder, p)]
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not missing and layers is not None:
        for index, layer in enumerate(layers):
            for part in LAYER_PARTS:
                try:
                    _get(layer, part)
                except AttributeError:
                    missing.append(f"encoder.layer[{index}].{part}")
    elif layers is None and "encoder" not in missing:
        missing.append("encoder.layer")
    if missing:
        raise ModelLoadError(
            f"The padding-free encoder needs a BERT-style model ({type(encoder).__name__} "
            f"has no {', '.join(missing[:3])}). Drop the 'unpad' step for this model."
        )


class UnpaddedEncoder(torch.nn.Module):
    """``encoder``'s forward with the linear layers on real tokens (rounded up to a
    multiple of ``token_bucket``; 1: exactly the real ones); returns the last hidden state
    in the padded layout [batch, length, hidden] (zeros at padding)."""

    def __init__(self, encoder: torch.nn.Module, token_bucket: int = 1) -> None:
        super().__init__()
        check_bert_like(encoder)
        if token_bucket < 1:
            raise ValueError(f"token_bucket must be at least 1, not {token_bucket}")
        self.token_bucket = token_bucket
        self.embeddings = _get(encoder, "embeddings")
        self.layers = _get(encoder, "encoder.layer")
        act = _get(self.layers[0], "intermediate").intermediate_act_fn
        self.act = act

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, length = input_ids.shape
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        width = hidden.shape[-1]
        real = attention_mask.reshape(-1) > 0
        selected = real
        if self.token_bucket > 1:
            # The first padding positions join the real ones until the count is a
            # multiple of the bucket (or all positions): tensor ops only, so it exports.
            count = real.to(torch.int64).sum()
            rounded = (count + self.token_bucket - 1) // self.token_bucket * self.token_bucket
            spare = rounded - count
            padding_rank = torch.cumsum((~real).to(torch.int64), 0) - 1
            selected = real | (padding_rank < spare)
        rows = torch.nonzero(selected).squeeze(1)  # [tokens]: the positions computed
        tokens = rows.shape[0]
        # position -> its token's row, or the extra zero row for the rest
        back = torch.where(selected, torch.cumsum(selected.to(torch.int64), 0) - 1, tokens)
        scores_mask = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -10000.0
        x = hidden.reshape(batch * length, width).index_select(0, rows)

        def padded(t: torch.Tensor) -> torch.Tensor:
            pad = torch.zeros(1, t.shape[1], dtype=t.dtype, device=t.device)
            return torch.cat([t, pad], 0).index_select(0, back).reshape(batch, length, -1)

        for layer in self.layers:
            attention = layer.attention.self
            heads = attention.num_attention_heads
            size = attention.attention_head_size

            def split(t: torch.Tensor, heads: int = heads, size: int = size) -> torch.Tensor:
                return padded(t).reshape(batch, length, heads, size).transpose(1, 2)

            q = split(attention.query(x))
            k = split(attention.key(x))
            v = split(attention.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(size) + scores_mask
            context = torch.matmul(torch.softmax(scores, dim=-1), v)
            context = context.transpose(1, 2).reshape(batch * length, heads * size)
            context = context.index_select(0, rows)
            x = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + x)
            inner = self.act(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(inner) + x)
        if self.token_bucket > 1:  # the padding positions computed for the bucket
            return padded(x) * attention_mask[:, :, None].to(x.dtype)
        return padded(x)
