"""Measuring a decoder LM the way llama.cpp's ``--kl-divergence`` does: windows of
held-out prose, the float model's next-token logits as the reference, and for every stage
its perplexity, mean KL divergence and top-1 agreement on the same tokens; plus decode
speed (new tokens/s at batch 1, greedy) timed interleaved across stages."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.errors import DataError
from slimserve.core.metrics import next_token_metrics

if TYPE_CHECKING:
    from slimserve.core.specs import DataSpec
    from slimserve.models import AnyModel
    from slimserve.models.torch import TorchModel


def eval_text(spec: DataSpec) -> tuple[str, str]:
    """The prose a recipe's eval split names, and where it came from (for the report)."""
    from slimserve.data import english_split

    if spec.text is not None:
        if not spec.text.is_file():
            raise DataError(f"Text file '{spec.text}' does not exist.")
        return spec.text.read_text(encoding="utf-8"), f"the file {spec.text.name}"
    if spec.example == "english":
        split = spec.split or "other"
        source = (
            "scikit-learn's dataset descriptions"
            if split == "other"
            else f"Python's documentation ({split} split)"
        )
        return "\n".join(english_split(split)), source
    raise DataError(
        "A decoder LM is measured on prose: give data.eval as {text: FILE} or "
        "{example: english, split: other}."
    )


def token_windows(tokens: list[int], window: int, count: int | None) -> list[list[int]]:
    """Consecutive windows of ``window`` tokens (the last, shorter one dropped)."""
    windows = [tokens[i : i + window] for i in range(0, len(tokens) - window + 1, window)]
    if not windows:
        raise DataError(
            f"The eval text holds {len(tokens)} tokens, fewer than one window of {window}: "
            "give more text or a smaller data.eval.max_length."
        )
    return windows[:count] if count else windows


@dataclass
class Reference:
    """The float model's logits on the eval windows: what every stage is compared with."""

    windows: list[list[int]]
    logits: list[np.ndarray]  # per window: [len - 1, vocab], positions that predict a token
    greedy: list[list[int]] = field(default_factory=list)  # per window's opening: new tokens

    @property
    def prompts(self) -> list[list[int]]:
        """Each window's first GREEDY_PROMPT tokens: the prompts greedy agreement uses."""
        return [w[:GREEDY_PROMPT] for w in self.windows]

    @property
    def targets(self) -> np.ndarray:
        return np.concatenate([np.asarray(w[1:]) for w in self.windows])


def torch_logits(model: TorchModel, tokens: list[int]) -> np.ndarray:
    import torch

    ids = torch.tensor([tokens])
    with torch.inference_mode():
        out = model.module(ids, torch.ones_like(ids))
    return np.asarray(out[0].float().numpy(), dtype=np.float32)


def stage_logits(model: AnyModel, tokens: list[int], runtime: Any) -> np.ndarray:
    """Every position's logits from the stage's own runtime (torch or the generator)."""
    if model.format == "llm":
        return np.asarray(runtime.logits(tokens), dtype=np.float32)
    return torch_logits(model, tokens)  # type: ignore[arg-type]


def reference_for(model: TorchModel, windows: list[list[int]]) -> Reference:
    reference = Reference(windows, [torch_logits(model, w)[:-1] for w in windows])
    reference.greedy = [torch_greedy(model, p, GREEDY_TOKENS) for p in reference.prompts]
    return reference


def torch_greedy(model: TorchModel, prompt: list[int], count: int) -> list[int]:
    """transformers' greedy continuation of ``prompt`` (``count`` new tokens at most)."""
    import torch

    module: Any = model.module.model
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = module.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, do_sample=False
        )
    eos = module.generation_config.eos_token_id
    ends = set(eos if isinstance(eos, list) else [eos])
    made = []
    for token in out[0, len(prompt) :].tolist():
        if token in ends:  # the generation runtime stops there too, without it
            break
        made.append(int(token))
    return made


def greedy_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """How much of the reference's greedy continuations the candidate repeats before it
    first departs from them: the mean common prefix, as a share of each reference."""
    shares = []
    for expected, got in zip(reference, candidate, strict=True):
        same = 0
        for a, b in zip(expected, got, strict=False):
            if a != b:
                break
            same += 1
        shares.append(same / max(len(expected), 1))
    return float(np.mean(shares)) if shares else 1.0


def llm_quality(model: AnyModel, reference: Reference, threads: int) -> dict[str, float]:
    """Perplexity, KL divergence, top-1 agreement and greedy agreement of ``model``
    against the reference."""
    runtime = generator_for(model, threads)
    logits = np.concatenate([stage_logits(model, w, runtime)[:-1] for w in reference.windows])
    metrics = next_token_metrics(np.concatenate(reference.logits), logits, reference.targets)
    if reference.greedy:
        if runtime is None:
            greedy = [torch_greedy(model, p, GREEDY_TOKENS) for p in reference.prompts]  # type: ignore[arg-type]
        else:
            from slimserve.runtime.generation import GenerationParams

            params = GenerationParams(max_new_tokens=GREEDY_TOKENS)
            greedy = [runtime.generate([p], params)[0] for p in reference.prompts]
        metrics["greedy_agreement"] = greedy_agreement(reference.greedy, greedy)
    return metrics


def generator_for(model: AnyModel, threads: int) -> Any:
    if model.format != "llm":
        return None
    from slimserve.runtime.generation import Generator

    return Generator(model, threads)  # type: ignore[arg-type]


def decode_speed(
    models: dict[str, AnyModel], prompt: list[int], new_tokens: int, rounds: int, threads: int
) -> dict[str, dict[str, float]]:
    """New tokens/s at batch 1 (greedy, ``new_tokens`` after ``prompt``) for each model,
    rounds interleaved across models after one warm-up each; medians and spread."""
    from slimserve.runtime.generation import GenerationParams

    runners = {name: _decoder(model, threads) for name, model in models.items()}
    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    for run in runners.values():
        run(prompt, params)
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            made = run(prompt, params)
            speeds[name].append(max(made, 1) / (time.perf_counter() - started))
    return {
        name: {
            "decode_tokens_per_s": statistics.median(values),
            "decode_min": min(values),
            "decode_max": max(values),
        }
        for name, values in speeds.items()
    }


def _decoder(model: AnyModel, threads: int) -> Any:
    """A function (prompt, params) -> new tokens made, for the model's runtime."""
    if model.format == "llm":
        generator = generator_for(model, threads)
        return lambda prompt, params: len(generator.generate([prompt], params)[0])
    import torch

    module: Any = model.module.model  # type: ignore[union-attr]

    def run(prompt: list[int], params: Any) -> int:
        torch.set_num_threads(threads)
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = module.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_new_tokens,
                min_new_tokens=params.max_new_tokens,
                do_sample=False,
            )
        return int(out.shape[1] - ids.shape[1])

    return run


DEFAULT_WINDOW = 256
GREEDY_PROMPT, GREEDY_TOKENS = 32, 16


def window_length(spec: DataSpec) -> int:
    """Tokens per eval window: the data spec's max_length when it sets one, else 256."""
    return spec.max_length if "max_length" in spec.model_fields_set else DEFAULT_WINDOW


def evaluate_llm_artifact(
    path: Path, spec: DataSpec, reference: str | None = None, threads: int = 2
) -> dict[str, float]:
    """Perplexity, KL divergence and top-1 agreement of a decoder LM artifact against the
    float model it was made from (``reference``: another model source instead), on the
    prose ``spec`` names."""
    from slimserve.artifact import load_artifact
    from slimserve.core.errors import ArtifactError
    from slimserve.core.specs import ModelSpec
    from slimserve.loading import causal_lm_folder, parse_model_spec
    from slimserve.models.causal_lm import load_causal_lm
    from slimserve.models.hf import load_tokenizer

    artifact = load_artifact(path)
    if artifact.model.format != "llm":
        raise ArtifactError(f"'{path}' is not a decoder LM artifact.")
    source = (
        parse_model_spec(reference)
        if reference is not None
        else ModelSpec.model_validate(artifact.manifest.source.spec)
    )
    model = load_causal_lm(causal_lm_folder(source))
    assert model.hf_folder is not None
    text, _ = eval_text(spec)
    tokens = load_tokenizer(model.hf_folder)(text)["input_ids"]
    windows = token_windows(tokens, window_length(spec), spec.samples)
    metrics = llm_quality(artifact.model, reference_for(model, windows), threads)  # type: ignore[arg-type]
    return {"windows": float(len(windows)), "window_tokens": float(len(windows[0])), **metrics}
