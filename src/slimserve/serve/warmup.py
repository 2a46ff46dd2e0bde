"""Warm-up before readiness: run a padding-free text model once per token bucket.

A padding-free encoder's linear layers run on the batch's real tokens, rounded up to
the ``unpad`` step's token bucket, so that row count changes from batch to batch.
OpenVINO's CPU plugin builds its kernels for each new row count on first sight: one
MiniLM batch cost 13 ms with its shape seen before and 30-45 ms the first time
(docs/transformers.md). Running every bucket up to ``warmup_tokens`` once at start moves
that cost before the server reports ready, where no client waits on it. Changing the
batch's rows or padded length is cheap, so one layout per token count is enough.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from slimserve.serve.config import ServeConfig
from slimserve.serve.repository import ServedModel

log = logging.getLogger("slimserve.serve")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def warmup_batches(token_bucket: int, max_length: int, limit: int) -> list[dict[str, np.ndarray]]:
    """One batch per bucket of real tokens up to ``limit``: rows of at most 64 tokens
    (at most ``max_length``), real tokens first in each row, the rest padding."""
    width = max(1, min(max_length, 64))
    batches = []
    for tokens in range(token_bucket, limit + 1, token_bucket):
        rows = -(-tokens // width)
        mask = np.zeros((rows, width), np.int64)
        mask.flat[:tokens] = 1  # row-major: full rows, then the remainder
        batches.append({"input_ids": mask.copy(), "attention_mask": mask})
    return batches


def warm_up(models: dict[str, dict[str, ServedModel]], config: ServeConfig) -> dict[str, int]:
    """Run each padding-free text model's token buckets up to ``config.warmup_tokens``
    (and at most the largest run the server makes); {"name/version": batches run}."""
    done: dict[str, int] = {}
    if config.warmup_tokens == 0:
        return done
    for name, versions in models.items():
        for version, served in versions.items():
            text = served.text
            names = {spec["name"] for spec in served.inputs}
            if (
                text is None
                or text.token_bucket < 2  # exact counts: a shape per token count, no bound
                or not {"input_ids", "attention_mask"} <= names <= set(TEXT_INPUTS)
            ):
                continue
            largest = config.max_batch_tokens or config.max_batch_size * text.max_length
            started = time.perf_counter()
            batches = warmup_batches(
                text.token_bucket, text.max_length, min(config.warmup_tokens, largest)
            )
            for batch in batches:
                # The ids are the attention mask itself: 1 is a valid id in any vocabulary.
                if "token_type_ids" in names:
                    batch["token_type_ids"] = np.zeros_like(batch["input_ids"])
                served.predictor.predict({n: batch[n] for n in served.predictor.input_names})
            done[f"{name}/{version}"] = len(batches)
            log.info(
                "warmed up",
                extra={
                    "model": name,
                    "version": version,
                    "token_shapes": len(batches),
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )
    return done
