"""A 2-layer BERT built from a config: random weights, a word-piece vocabulary of real
English words (from the standard library's text), saved as Hugging Face saves models.
No download: for tests and benchmarks that need a real text model fast ([hf] extra)."""

from __future__ import annotations

import re
from pathlib import Path


def build_tiny_bert(folder: Path, max_positions: int = 128) -> Path:
    """Write the model and its tokenizer into ``folder`` and return it."""
    import torch

    from slimserve.core.errors import require

    require("transformers", "hf", "The tiny BERT example")
    from transformers import BertConfig, BertModel, BertTokenizer  # the fast one in v5

    from slimserve.examples.minilm import english_sentences

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for s in english_sentences(600) for w in re.findall(r"[a-z]+", s.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *list("!\"'(),-.:;?_"), *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=max_positions,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
