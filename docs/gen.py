"""Regenerate the reference pages from the code: ``python docs/gen.py`` (``make docs``).

- docs/recipe-reference.md from the recipe's pydantic models and the STEPS registry;
- docs/cli.md from the Typer app (``typer slimserve.cli utils docs``).

A test fails when a committed page differs from what this script generates.
"""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOCS = Path(__file__).parent


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", "") for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + " (optional)"
    if origin in (tuple, list):
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation)).replace("Path", "path")


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if field.default_factory is not None:
        return "(see section)"
    value = field.default
    if value is None:
        return "—"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


def _section(model: type[BaseModel], heading: str, intro: str = "") -> list[str]:
    lines = [f"### {heading}", ""]
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    if intro or doc:
        lines += [intro or doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        lines.append(
            f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | "
            f"{field.description or ''} |"
        )
    return [*lines, ""]


def _nested(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = []
    for field in model.model_fields.values():
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel) and c not in found:
                found.append(c)
    return found


def variant_label(key: str, tag: str, cls: type[BaseModel]) -> str:
    from slimserve.recipe import TAG_KEYS

    """How a recipe picks this variant of step ``key``: ``mode: static``; ``granularity:
    unstructured | n:m | channel | head`` (every value of the picking key's Literal)."""
    if not tag:
        return ""
    field = TAG_KEYS[key]
    values = typing.get_args(cls.model_fields[field].annotation) or (tag,)
    return f"{field}: {' | '.join(str(v) for v in values)}"


def _default_tag(config_type: object) -> str:
    """The tag a step without a ``mode`` key gets."""
    from slimserve.recipe import step_variants

    marks = typing.get_args(config_type)[1:]
    pick = next(m.discriminator for m in marks if hasattr(m, "discriminator"))
    return str(pick({})) if step_variants(config_type) else ""


def recipe_reference() -> str:
    from slimserve.recipe import STEPS, Recipe, step_variants

    lines = [
        "# Recipe reference",
        "",
        "Generated from the code by `python docs/gen.py`; a test keeps it in sync. Every key",
        "below is checked when a recipe loads: an unknown key is an error that names its path",
        "and the nearest valid key; a wrong type says what was expected.",
        "",
        "## Top level",
        "",
    ]
    lines += _section(Recipe, "Recipe", "The keys of a recipe file.")
    seen: list[type[BaseModel]] = []
    queue = _nested(Recipe)
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.append(model)
        lines += _section(model, model.__name__)
        queue += _nested(model)
    lines += [
        "## Steps",
        "",
        "`steps` is a list; each item is one key naming the technique, mapping to its options",
        "(`- quantize: {mode: static}`), or the bare name for all defaults (`- export`). The",
        "pipeline checks the order before loading anything and inserts `export` where a step",
        "needs ONNX.",
        "",
    ]
    for key, config_type in STEPS.items():
        for tag, config in step_variants(config_type).items():
            accepts = "/".join(getattr(config, "accepts", ()))
            produces = getattr(config, "produces", "")
            label = variant_label(key, tag, config)
            heading = f"`{key}`, `{label}`" if tag else f"`{key}`"
            default = " The default." if tag and tag == _default_tag(config_type) else ""
            lines += _section(
                config,
                heading,
                f"{' '.join((config.__doc__ or '').split())}{default} Takes a {accepts} "
                f"model, gives {produces}.",
            )
            for nested in _nested(config):
                if nested not in seen:
                    seen.append(nested)
                    lines += _section(nested, nested.__name__)
    return "\n".join(lines).rstrip() + "\n"


def cli_reference() -> str:
    typer_exe = Path(sys.executable).parent / "typer"
    out = subprocess.run(
        [
            str(typer_exe),
            "slimserve.cli",
            "utils",
            "docs",
            "--name",
            "slimserve",
            "--title",
            "CLI reference",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.rstrip() + "\n"


def main() -> None:
    (DOCS / "recipe-reference.md").write_text(recipe_reference())
    (DOCS / "cli.md").write_text(cli_reference())


if __name__ == "__main__":
    main()
