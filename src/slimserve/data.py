"""Data specs -> arrays: ``example:``, ``npz:`` and ``python:module:fn``.

A ``Dataset`` is a dict of named input arrays (first axis = samples) and optional labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.core.errors import DataError

if TYPE_CHECKING:
    from slimserve.core.specs import DataSpec


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, count: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:count]
        return Dataset({k: v[:count] for k, v in self.inputs.items()}, labels)

    def batches(self, size: int) -> Iterator[Dataset]:
        for start in range(0, len(self), size):
            stop = start + size
            labels = None if self.labels is None else self.labels[start:stop]
            yield Dataset({k: v[start:stop] for k, v in self.inputs.items()}, labels)

    def renamed(self, names: tuple[str, ...]) -> Dataset:
        """The same arrays under the model's input names (positional when counts match)."""
        if set(names) == set(self.inputs):
            return self
        if len(names) != len(self.inputs):
            raise DataError(
                f"The model takes {len(names)} input(s) {list(names)} but the data has "
                f"{len(self.inputs)} array(s) {list(self.inputs)}. Name the data arrays "
                "after the model inputs."
            )
        return Dataset(dict(zip(names, self.inputs.values(), strict=True)), self.labels)


def load_data(spec: DataSpec | str | dict[str, Any], tokenizer: Path | None = None) -> Dataset:
    """Materialize one data split from its spec: a ``DataSpec``, a recipe's data entry
    as a dict (``{example: digits, split: train}``) or the command line's text
    (``example:digits:train``, ``npz:data.npz``). Text is tokenized with
    ``spec.tokenizer``, else ``tokenizer`` (the recipe's Hugging Face model folder)."""
    spec = _as_spec(spec)
    if spec.is_text:
        dataset = _text(spec, spec.tokenizer or tokenizer)
    elif spec.example is not None:
        dataset = _example(spec.example, spec.split)
    elif spec.npz is not None:
        dataset = _npz(spec.npz, spec.inputs, spec.labels)
    elif spec.python is not None:
        dataset = _python(spec.python, spec.split)
    else:  # the recipe model guarantees exactly one source
        raise DataError("A data spec needs one of: example, npz, python.")
    if spec.samples is not None:
        if spec.samples > len(dataset):
            raise DataError(
                f"The data spec asks for {spec.samples} samples but the source has only "
                f"{len(dataset)}. Lower 'samples' or give more data."
            )
        dataset = dataset.take(spec.samples)
    return dataset


ENGLISH_SPLITS = {"train": (0, -512), "calibration": (-512, -256), "eval": (-256, None)}


def english_split(split: str | None) -> list[str]:
    """The 'english' example's sentences: eval is the last 256 of Python's docs,
    calibration the 256 before, train the rest (eval shares nothing with calibration or
    training); 'other' is another source, scikit-learn's dataset descriptions (~135),
    for what a model keeps on text unlike anything it was tuned on."""
    from slimserve.examples.minilm import english_sentences, other_source_sentences

    if split == "other":
        return other_source_sentences()
    if split not in ENGLISH_SPLITS:
        raise DataError(
            f"The english example has splits {', '.join(ENGLISH_SPLITS)}, other, not '{split}'."
        )
    start, stop = ENGLISH_SPLITS[split]
    return english_sentences()[start:stop]


def _text(spec: DataSpec, tokenizer: Path | None) -> Dataset:
    if tokenizer is None:
        raise DataError(
            "Text data needs a tokenizer: use a Hugging Face model (model.hf) or set "
            "the data spec's 'tokenizer' to a saved tokenizer's folder."
        )
    if spec.text is not None:
        if not spec.text.is_file():
            raise DataError(f"Text file '{spec.text}' does not exist.")
        try:
            lines = spec.text.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"'{spec.text}' is not UTF-8 text ({exc.reason}).") from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise DataError(f"'{spec.text}' has no non-empty lines.")
    else:
        texts = english_split(spec.split or "eval")
    from slimserve.models.hf import load_tokenizer, tokenize

    encoded = tokenize(load_tokenizer(tokenizer), texts, spec.max_length)
    return Dataset(encoded)


def _example(name: str, split: str | None) -> Dataset:
    if name != "digits":
        raise DataError(f"Unknown example dataset '{name}'. Available: digits, english.")
    from slimserve.examples.digits import load_split

    if split not in ("train", "test"):
        raise DataError(f"The digits example has splits 'train' and 'test', not '{split}'.")
    x, y = load_split(split)
    return Dataset({"input": x}, y)


def _npz(path: Path, inputs: list[str] | None, labels: str | None) -> Dataset:
    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist.")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"'{path}' is not a readable .npz file ({exc}).") from exc
    with archive:
        keys = list(archive.keys())
        wanted = inputs or [k for k in keys if k != (labels or "labels")]
        missing = [k for k in [*wanted, *([labels] if labels else [])] if k not in keys]
        if missing:
            raise DataError(f"'{path}' has no array(s) {missing}; it holds {keys}.")
        label_key = labels or ("labels" if "labels" in keys else None)
        arrays = {k: archive[k] for k in wanted}
        label_array = archive[label_key] if label_key else None
    if not arrays:
        raise DataError(f"'{path}' holds no input arrays (only {keys}).")
    lengths = {len(a) for a in arrays.values()}
    if label_array is not None:
        lengths.add(len(label_array))
    if len(lengths) != 1:
        raise DataError(f"The arrays in '{path}' disagree on the number of samples: {lengths}.")
    return Dataset(arrays, label_array)


def _python(spec: str, split: str | None) -> Dataset:
    from slimserve.core.callables import resolve_callable

    try:
        fn = resolve_callable(spec)
    except Exception as exc:
        raise DataError(str(exc)) from exc
    result: Any = fn(split) if split is not None else fn()
    if isinstance(result, Dataset):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        x, y = result
        inputs = x if isinstance(x, dict) else {"input": x}
        return Dataset({k: np.asarray(v) for k, v in inputs.items()}, np.asarray(y))
    if isinstance(result, dict):
        return Dataset({k: np.asarray(v) for k, v in result.items()})
    raise DataError(
        f"'{spec}' returned {type(result).__name__}; return (inputs, labels), a dict of "
        "input arrays, or a slimserve Dataset."
    )


def _as_spec(spec: DataSpec | str | dict[str, Any]) -> DataSpec:
    from pydantic import ValidationError

    from slimserve.core.specs import DataSpec

    if isinstance(spec, str):
        return parse_data_spec(spec)
    if isinstance(spec, dict):
        try:
            return DataSpec.model_validate(spec)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
            )
            raise DataError(
                f"Not a valid data spec {spec!r}: {problems}. Write it as in a recipe's "
                "data section, e.g. {'example': 'digits', 'split': 'train'}."
            ) from None
    if not isinstance(spec, DataSpec):
        raise DataError(
            f"load_data takes a DataSpec, a dict or text such as 'example:digits:train', "
            f"not {type(spec).__name__}."
        )
    return spec


def parse_data_spec(text: str) -> DataSpec:
    """A data spec from the command line: ``example:digits[:split]``,
    ``example:english[:split]``, ``npz:PATH`` (or a path ending in .npz), ``text:FILE``,
    ``python:pkg.module:function[:split]``."""
    from slimserve.core.specs import DataSpec

    kind, _, rest = text.partition(":")
    if text.endswith(".npz") and kind != "npz":
        return DataSpec(npz=Path(text))
    if kind == "example" and rest:
        name, _, split = rest.partition(":")
        return DataSpec(example=name, split=split or ("eval" if name == "english" else "test"))
    if kind == "npz" and rest:
        return DataSpec(npz=Path(rest))
    if kind == "text" and rest:
        return DataSpec(text=Path(rest))
    if kind == "python" and rest.count(":") in (1, 2):
        parts = rest.split(":")
        split_name = parts[2] if len(parts) == 3 else None
        return DataSpec(python=f"{parts[0]}:{parts[1]}", split=split_name)
    raise DataError(
        f"Cannot read data spec '{text}'. Use example:digits[:test], example:english[:eval], "
        "npz:data.npz, text:FILE or python:pkg.module:function[:split]."
    )


def padded_width(mask: np.ndarray) -> int:
    """How many leading positions of a padding mask (rows x positions) any row uses: the
    width a batch can be cut to without dropping a token. Only trailing padding counts,
    so real tokens keep their positions (a left-padded batch keeps its full width)."""
    used = np.flatnonzero((np.asarray(mask) != 0).any(axis=0))
    return int(used[-1]) + 1 if len(used) else min(1, mask.shape[1])


TEXT_BATCH = 32
"""Sentences per batch where slimserve itself batches text in length order."""


def length_order(inputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Sample indices from the shortest sentence to the longest, for text (a 2-D
    ``attention_mask`` input, Hugging Face's name); None for other data."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return None
    return np.argsort((mask != 0).sum(axis=1), kind="stable")
