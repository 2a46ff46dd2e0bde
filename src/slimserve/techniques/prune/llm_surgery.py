"""What structured pruning of a decoder LM measures and cuts: how much each decoder block
changes its input on calibration text (block influence; the angular distance across a run
of blocks), how much each MLP channel and attention head adds to the residual stream, and
the smaller model rebuilt from its config with those blocks, channels or heads gone.

Written here because no maintained CPU library does it: torch-pruning's dependency graph
prunes a Llama's channels but not whole blocks nor query heads within a grouped KV head,
and ModelOpt's Minitron (the method this follows) runs on GPUs only. The model is rebuilt
by transformers from a changed config (``num_hidden_layers``, ``intermediate_size``,
``num_attention_heads`` with ``head_dim`` kept), so every runtime that reads a Hugging Face
folder (the onnxruntime-genai builder included) takes it as it takes any model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slimserve.core.errors import RecipeError


def decoder_layers(hf_model: Any) -> Any:
    """The decoder blocks (``model.layers``) of a Llama-shaped causal LM, or a RecipeError."""
    layers = getattr(getattr(hf_model, "model", None), "layers", None)
    first = layers[0] if layers is not None and len(layers) else None
    attention, mlp = getattr(first, "self_attn", None), getattr(first, "mlp", None)
    if first is None or not all(
        hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")
    ):
        raise RecipeError(
            "Depth and width pruning take a Llama-shaped decoder (model.layers with "
            "self_attn.q_proj/k_proj/v_proj/o_proj and mlp.gate_proj/up_proj/down_proj, as "
            f"Llama, SmolLM, Qwen2 and Mistral have); {type(hf_model).__name__} is not."
        )
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise RecipeError(
            f"{type(hf_model).__name__}'s MLP has no gate_proj/up_proj/down_proj: width "
            "pruning takes a gated MLP as Llama's."
        )
    return layers


def calibration_batches(tokens: list[int], samples: int, batch: int = 4) -> list[torch.Tensor]:
    """Up to ``samples`` windows of 128 tokens, ``batch`` at a time."""
    from slimserve.models.causal_lm import CALIBRATION_WINDOW, text_windows

    windows = text_windows(tokens, CALIBRATION_WINDOW, samples, "data.calibration")
    return [torch.tensor(windows[i : i + batch]) for i in range(0, len(windows), batch)]


def _forward(hf_model: Any, ids: torch.Tensor) -> None:
    with torch.no_grad():
        hf_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def block_similarity(hf_model: Any, batches: list[torch.Tensor]) -> np.ndarray:
    """``S[i, j]``: the mean cosine similarity, over calibration tokens, between the
    hidden state entering block ``i`` and the one entering block ``j`` (``j`` = the block
    count: the last block's output, before the final norm)."""
    layers = decoder_layers(hf_model)
    count = len(layers)
    states: list[torch.Tensor] = []

    def entering(module: Any, args: Any, kwargs: Any) -> None:
        states.append((args[0] if args else kwargs["hidden_states"]).detach())

    def leaving(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        while isinstance(output, (tuple, list)):
            output = output[0]
        states.append(output.detach())

    handles = [layer.register_forward_pre_hook(entering, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(leaving, with_kwargs=True))
    total = np.zeros((count + 1, count + 1))
    seen = 0
    try:
        for ids in batches:
            states.clear()
            _forward(hf_model, ids)
            flat = torch.nn.functional.normalize(
                torch.stack([s.reshape(-1, s.shape[-1]).float() for s in states]), dim=-1
            )  # [count + 1, tokens, hidden]
            total += torch.einsum("itd,jtd->ij", flat, flat).double().numpy()
            seen += flat.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    return np.asarray(total / seen)


def layers_to_drop(similarity: np.ndarray, count: int, how: str) -> list[int]:
    """The ``count`` blocks to remove: the least influential ones (block influence, 1 -
    cos between a block's input and output; ShortGPT), or the run of ``count`` consecutive
    blocks whose input and output are closest in angle (Gromov et al.)."""
    layers = similarity.shape[0] - 1
    if count == 0:
        return []
    if how == "block_influence":
        influence = 1.0 - np.diag(similarity, 1)
        return sorted(int(i) for i in np.argsort(influence, kind="stable")[:count])
    angles = [
        math.acos(float(np.clip(similarity[start, start + count], -1, 1))) / math.pi
        for start in range(layers - count + 1)
    ]
    start = int(np.argmin(angles))
    return list(range(start, start + count))


@dataclass(frozen=True)
class WidthScores:
    """Per block: how much each MLP channel and each query head adds to the residual."""

    channels: list[torch.Tensor]  # [intermediate] per block
    heads: list[torch.Tensor]  # [query heads] per block


def width_scores(hf_model: Any, batches: list[torch.Tensor]) -> WidthScores:
    """Each MLP channel's and query head's contribution to the block's output on
    calibration text: the root mean square over tokens of the norm of what it adds
    (a channel: |activation| x its down_proj column's norm; a head: its slice of o_proj
    applied to its attention output). Minitron's activation importance, made exact."""
    layers = decoder_layers(hf_model)
    channel_sums = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    head_dim = _head_dim(hf_model)
    head_sums = [torch.zeros(layer.self_attn.o_proj.in_features // head_dim) for layer in layers]
    tokens = [0]

    def mlp_hook(index: int) -> Any:
        def hook(module: Any, args: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            channel_sums[index] += x.pow(2).sum(0) * module.weight.float().pow(2).sum(0)

        return hook

    def head_hook(index: int) -> Any:
        def hook(module: Any, args: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            heads = x.shape[-1] // head_dim
            weight = module.weight.float().reshape(module.out_features, heads, head_dim)
            added = torch.einsum("thd,ohd->tho", x.reshape(-1, heads, head_dim), weight)
            head_sums[index] += added.pow(2).sum(-1).sum(0)
            if index == 0:
                tokens[0] += x.shape[0]

        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(index)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(head_hook(index)))
    try:
        for ids in batches:
            _forward(hf_model, ids)
    finally:
        for handle in handles:
            handle.remove()
    seen = max(tokens[0], 1)
    return WidthScores(
        [(s / seen).sqrt() for s in channel_sums], [(s / seen).sqrt() for s in head_sums]
    )


def _head_dim(hf_model: Any) -> int:
    config = hf_model.config
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def kept_channels(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest-scoring channels, in their original order."""
    return torch.sort(torch.argsort(scores, descending=True, stable=True)[:keep]).values


def kept_heads(scores: torch.Tensor, kv_heads: int, keep_per_group: int) -> list[int]:
    """Within each grouped-KV head's query heads, the ``keep_per_group`` that add most,
    so every group keeps its K/V and the same number of queries (what ``repeat_kv``
    needs: query head ``h`` reads KV head ``h // group``)."""
    group = scores.numel() // kv_heads
    kept: list[int] = []
    for g in range(kv_heads):
        local = kept_channels(scores[g * group : (g + 1) * group], keep_per_group)
        kept += [g * group + int(i) for i in local]
    return kept


def without_layers(hf_model: Any, drop: list[int]) -> Any:
    """A new model without the blocks ``drop`` (the rest renumbered)."""
    count = len(decoder_layers(hf_model))
    kept = [i for i in range(count) if i not in set(drop)]
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, value in hf_model.state_dict().items():
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            old = int(parts[2])
            if old not in renumber:
                continue
            key = ".".join(["model", "layers", str(renumber[old]), *parts[3:]])
        state[key] = value
    changes: dict[str, Any] = {"num_hidden_layers": len(kept)}
    layer_types = getattr(hf_model.config, "layer_types", None)
    if layer_types:
        changes["layer_types"] = [layer_types[i] for i in kept]
    return rebuilt(hf_model, changes, state)


def narrower(hf_model: Any, channels: list[torch.Tensor], heads: list[list[int]]) -> Any:
    """A new model whose blocks keep only ``channels`` of their MLP and ``heads`` of their
    query heads (the same count in every block: the config holds one width)."""
    head_dim = _head_dim(hf_model)
    state = hf_model.state_dict()
    for index, (keep, kept) in enumerate(zip(channels, heads, strict=True)):
        prefix = f"model.layers.{index}."
        for name in ("gate_proj", "up_proj"):
            _rows(state, f"{prefix}mlp.{name}", keep)
        state[f"{prefix}mlp.down_proj.weight"] = state[f"{prefix}mlp.down_proj.weight"][:, keep]
        rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in kept])
        _rows(state, f"{prefix}self_attn.q_proj", rows)
        o_proj = f"{prefix}self_attn.o_proj.weight"
        state[o_proj] = state[o_proj][:, rows]
    return rebuilt(
        hf_model,
        {
            "intermediate_size": int(channels[0].numel()),
            "num_attention_heads": len(heads[0]),
            "head_dim": head_dim,
        },
        state,
    )


def _rows(state: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> None:
    state[f"{name}.weight"] = state[f"{name}.weight"][rows]
    if f"{name}.bias" in state:
        state[f"{name}.bias"] = state[f"{name}.bias"][rows]


def rebuilt(hf_model: Any, changes: dict[str, Any], state: dict[str, torch.Tensor]) -> Any:
    """The model's class built from its config with ``changes``, holding ``state``."""
    config = hf_model.config.__class__.from_dict({**hf_model.config.to_dict(), **changes})
    model = type(hf_model)(config)
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def weight_count(hf_model: Any) -> int:
    """Parameters, a tied embedding and head counted once."""
    return sum(int(p.numel()) for p in hf_model.parameters())


def decoded_weights(hf_model: Any) -> int:
    """The weights a decoded token reads: every block's and the head's (the embedding is
    one row per token; when tied, its table is the head's)."""
    blocks = sum(int(p.numel()) for p in decoder_layers(hf_model).parameters())
    head = hf_model.get_output_embeddings()
    return blocks + (int(head.weight.numel()) if head is not None else 0)
