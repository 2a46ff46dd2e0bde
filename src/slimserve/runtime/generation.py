"""The generation runtime: a decoder LM folder (``LlmModel``) in onnxruntime-genai, with
its KV cache, batched decoding and the model's own tokenizer (``og.Tokenizer`` reads the
same ``tokenizer.json``). ``Generator.logits`` gives every position's next-token scores
for a sequence (the prefill's output), which quality is measured on: the figures describe
exactly what serves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimserve.core.errors import ModelLoadError, first_line, require
from slimserve.models.llm import LlmModel


@dataclass(frozen=True)
class GenerationParams:
    """How tokens are chosen: greedy when ``temperature`` is 0."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # end-of-sequence is not taken before this many (benchmarks)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None


class Generator:
    """One decoder LM in onnxruntime-genai, with explicit threads."""

    def __init__(self, model: LlmModel | str | Path, threads: int = 2) -> None:
        og: Any = require("onnxruntime_genai", "llm", "Generating text")
        folder = model.folder if isinstance(model, LlmModel) else Path(model)
        config = og.Config(str(folder))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        try:
            self.model = og.Model(config)
        except Exception as exc:
            raise ModelLoadError(
                f"onnxruntime-genai could not load '{folder}': {first_line(exc)}."
            ) from exc
        self.og = og
        self.tokenizer = og.Tokenizer(self.model)
        genai = json.loads((folder / "genai_config.json").read_text())["model"]
        self.context_length = int(genai["context_length"])
        eos = genai["eos_token_id"]
        self.eos_token_ids = {int(t) for t in (eos if isinstance(eos, list) else [eos])}
        self.pad_token_id = int(genai.get("pad_token_id", 0))
        self.folder = folder

    def chat_prompt(self, message: str, system: str | None = None) -> str:
        """``message`` as a user turn in the model's own chat template, ready for the
        assistant's answer (a template that cannot render it is a ModelLoadError)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": message}
        ]
        try:
            return str(
                self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
            )
        except Exception as exc:
            raise ModelLoadError(
                f"The model's chat template could not render the conversation: {first_line(exc)}."
            ) from exc

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(np.asarray(tokens, dtype=np.int32)))

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Every position's next-token logits for ``tokens`` (float32, [len, vocab])."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.asarray([tokens], dtype=np.int32))
        out = np.asarray(generator.get_output("logits"), dtype=np.float32)
        return out.reshape(len(tokens), -1)

    def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[list[int]]:
        """The new tokens of each prompt (token ids), decoded together as one batch."""
        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        total = min(width + params.max_new_tokens, self.context_length)
        batch = np.full((len(prompts), width), self.pad_token_id, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            batch[row, : len(prompt)] = prompt  # right-padded, as onnxruntime-genai pads
        search: dict[str, Any] = {"max_length": total, "batch_size": len(prompts)}
        if params.min_new_tokens:
            search["min_length"] = min(width + params.min_new_tokens, total)
        if params.temperature > 0:
            search |= {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
            }
            if params.seed is not None:
                search["random_seed"] = params.seed
        else:
            search["do_sample"] = False
        options = self.og.GeneratorParams(self.model)
        options.set_search_options(**search)
        generator = self.og.Generator(self.model, options)
        generator.append_tokens(batch)
        while not generator.is_done():
            generator.generate_next_token()
        return [self._until_eos(generator.get_sequence(row)[width:]) for row in range(len(prompts))]

    def _until_eos(self, tokens: Any) -> list[int]:
        """The new tokens up to (not including) the first end-of-sequence token."""
        kept = []
        for token in tokens:
            if int(token) in self.eos_token_ids:
                break
            kept.append(int(token))
        return kept


def load_generator(source: LlmModel | str | Path, threads: int = 2) -> Generator:
    """The generator of a decoder LM artifact (hashes verified, as every load) or of a
    built folder (``LlmModel``)."""
    from slimserve.artifact import is_artifact, load_artifact
    from slimserve.core.errors import ArtifactError

    if isinstance(source, LlmModel):
        return Generator(source, threads)
    if not is_artifact(source):
        raise ArtifactError(
            f"'{source}' is not an artifact: give the folder 'slimserve optimize' wrote for a "
            "decoder LM."
        )
    model = load_artifact(source).model
    if not isinstance(model, LlmModel):
        raise ArtifactError(
            f"'{source}' is not a decoder LM artifact (it serves tensors): use "
            "slimserve eval/bench/serve on it."
        )
    return Generator(model, threads)
