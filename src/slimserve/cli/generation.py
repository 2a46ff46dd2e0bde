"""Commands for decoder LMs: generate (text from an LLM artifact)."""

from __future__ import annotations

from pathlib import Path

import typer

from slimserve.cli.base import app, console, user_errors
from slimserve.core.errors import SlimserveError


@app.command()
@user_errors
def generate(
    artifact: Path = typer.Argument(..., help="A decoder LM artifact (slimserve optimize)."),
    prompt: str = typer.Argument(..., help="The prompt (or the user's message, with --chat)."),
    chat: bool = typer.Option(
        False, "--chat", help="Render the prompt as a user message with the model's template."
    ),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="New tokens, at most."),
    temperature: float = typer.Option(
        0.0, "--temperature", min=0.0, help="0: greedy; above: sampling."
    ),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed (same seed, same text)."),
    threads: int = typer.Option(2, "--threads", min=1, help="Intra-op threads."),
) -> None:
    """Generate text with a decoder LM artifact (onnxruntime-genai, its KV cache)."""
    from slimserve.runtime.generation import GenerationParams, load_generator

    generator = load_generator(artifact, threads)
    text = generator.chat_prompt(prompt) if chat else prompt
    tokens = generator.encode(text)
    if len(tokens) >= generator.context_length:
        raise SlimserveError(
            f"The prompt is {len(tokens)} tokens; the model's context is "
            f"{generator.context_length}. Send a shorter prompt."
        )
    params = GenerationParams(
        max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
    )
    (new,) = generator.generate([tokens], params)
    console.print(generator.decode(new), highlight=False, markup=False)
