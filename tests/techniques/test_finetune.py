"""Fine-tuning on text: batches trimmed to their longest sentence, length grouping."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import slimserve as ss
from slimserve.core.context import StepLog
from slimserve.techniques.finetune import epoch_batches, trim_padding

NAMES = ("input_ids", "attention_mask")


def sentence_lengths(count: int) -> torch.Tensor:
    """Token counts of real English sentences (words + 2 special tokens), a long tail."""
    from slimserve.examples.minilm import english_sentences

    return torch.tensor([len(s.split()) + 2 for s in english_sentences(count)])


def padding_share(batches: list[torch.Tensor], lengths: torch.Tensor) -> float:
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1 - float(lengths.sum()) / padded


@pytest.mark.parametrize("grouped", [False, True])
def test_every_sample_is_in_one_batch_per_epoch(grouped: bool) -> None:
    lengths = sentence_lengths(300)
    generator = torch.Generator().manual_seed(0)
    batches = epoch_batches(300, 32, generator, lengths if grouped else None)
    assert len(batches) == 10  # as many optimizer steps as without grouping
    assert sorted(torch.cat(batches).tolist()) == list(range(300))


def test_grouping_by_length_cuts_padding_and_stays_random() -> None:
    lengths = sentence_lengths(600)
    random = epoch_batches(600, 32, torch.Generator().manual_seed(0))
    first = epoch_batches(600, 32, torch.Generator().manual_seed(0), lengths)
    second = epoch_batches(600, 32, torch.Generator().manual_seed(1), lengths)
    assert padding_share(first, lengths) < 0.5 * padding_share(random, lengths)
    assert [b.tolist() for b in first] != [b.tolist() for b in second]


def test_a_trimmed_batch_gives_the_same_embeddings(tiny_bert: Path) -> None:
    from slimserve.models.hf import load_hf, load_tokenizer, tokenize

    model = load_hf(tiny_bert)
    sentences = ["A short one.", "Another short sentence here.", "Tiny."]
    long = " ".join(["word"] * 60)
    encoded = tokenize(load_tokenizer(tiny_bert), [*sentences, long], 128)
    batch = [torch.from_numpy(encoded[n][:3]) for n in model.input_names]  # no long one
    trimmed = trim_padding(model.input_names, batch)
    longest = int(batch[model.input_names.index("attention_mask")].sum(dim=1).max())
    assert all(t.shape == (3, longest) for t in trimmed)
    assert batch[0].shape[1] > 3 * longest
    with torch.no_grad():
        full, short = model.module(*batch), model.module(*trimmed)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-4)


def test_left_padding_and_full_batches_are_left_alone() -> None:
    ids = torch.arange(12).reshape(2, 6)
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    assert trim_padding(NAMES, [ids, left])[0].shape == (2, 6)
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    other = torch.ones(2, 3)  # not shaped like the mask: never cut
    cut = trim_padding((*NAMES, "extra"), [ids, right, other])
    assert [t.shape for t in cut] == [(2, 3), (2, 3), (2, 3)]
    assert cut[0].tolist() == [[0, 1, 2], [6, 7, 8]]


def test_distillation_on_text_with_length_grouping(tiny_bert: Path) -> None:
    from slimserve.models.hf import load_hf, load_tokenizer, tokenize

    model = load_hf(tiny_bert)
    from slimserve.examples.minilm import english_sentences

    encoded = tokenize(load_tokenizer(tiny_bert), english_sentences(96), 128)
    data = ss.Dataset({n: encoded[n] for n in model.input_names})
    config = ss.PruneConfig.model_validate(
        {
            "granularity": "head",
            "schedule": {
                "polynomial_decay": {"final_sparsity": 0.5, "end_step": 4, "frequency": 2}
            },
            "finetune": {"epochs": 2, "batch_size": 16, "lr": 1e-4, "group_by_length": True},
        }
    )
    log = StepLog()
    ctx = ss.Context(data={"train": data, "eval": data}, reference=model, log=log)
    config.apply(copy.deepcopy(model), ctx)
    assert len(log.details["losses"]) == 12  # 2 epochs x 6 batches
    assert np.isfinite(log.details["losses"]).all()
    assert 0.5 < log.details["metric_after"] <= 1.0


def test_group_by_length_on_a_model_without_text_is_refused(digits_torch, digits_train) -> None:  # type: ignore[no-untyped-def]
    config = ss.PruneConfig.model_validate(
        {
            "granularity": "unstructured",
            "schedule": {
                "polynomial_decay": {"final_sparsity": 0.5, "end_step": 4, "frequency": 2}
            },
            "finetune": {"epochs": 1, "group_by_length": True},
        }
    )
    ctx = ss.Context(data={"train": digits_train}, reference=digits_torch)
    with pytest.raises(ss.RecipeError, match="takes no attention_mask.*Drop group_by_length"):
        config.apply(copy.deepcopy(digits_torch), ctx)
