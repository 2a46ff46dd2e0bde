"""The reference pages are generated from the code and must match it."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
gen = runpy.run_path(str(ROOT / "docs" / "gen.py"))


def test_recipe_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert committed == gen["recipe_reference"](), "run: make docs"


def test_recipe_reference_lists_every_step_and_key() -> None:
    from slimserve.recipe import STEPS, step_variants

    variant_label = gen["variant_label"]

    text = gen["recipe_reference"]()
    for key, config_type in STEPS.items():
        for tag, config in step_variants(config_type).items():
            label = variant_label(key, tag, config)
            section = text.split(f"### `{key}`, `{label}`" if tag else f"### `{key}`\n")[1]
            section = section.split("\n### `")[0]
            for field in config.model_fields:
                assert f"| `{field}` |" in section, (key, tag, field)


@pytest.mark.slow
def test_cli_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == gen["cli_reference"](), "run: make docs"


def blocks(path: Path, language: str) -> list[str]:
    text = path.read_text()
    return [b.split("```", 1)[0] for b in text.split(f"```{language}\n")[1:]]


def test_readme_recipe_is_valid() -> None:
    import yaml

    import slimserve as ss

    recipes = [b for b in blocks(ROOT / "README.md", "yaml") if b.startswith("name:")]
    assert recipes
    for text in recipes:
        ss.parse_recipe(yaml.safe_load(text))


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (code,) = blocks(ROOT / "README.md", "python")
    monkeypatch.chdir(ROOT)
    exec(compile(code.replace('"runs/"', repr(str(tmp_path))), "README.md", "exec"), {})
    assert (tmp_path / "digits-cnn" / "manifest.json").is_file()


def benchmark_sections() -> dict[str, str]:
    """BENCHMARKS.md's sections by key (<!-- key:start --> ... <!-- key:end -->)."""
    import re

    text = (Path(__file__).parent.parent / "BENCHMARKS.md").read_text()
    return dict(re.findall(r"<!-- ([\w-]+):start -->(.*?)<!-- \1:end -->", text, re.S))


def quoted_figures_missing() -> list[str]:
    """Figures (numbers with two or more decimals) in a paragraph of the docs or README
    that names a BENCHMARKS.md section, which none of the sections it names holds."""
    import re

    sections = benchmark_sections()
    root = Path(__file__).parent.parent
    missing = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for paragraph in page.read_text().split("\n\n"):
            named = [k for k in re.findall(r"sections?\s+`?([\w-]+)", paragraph) if k in sections]
            if not named:
                continue
            held = " ".join(sections[k] for k in named)
            for figure in re.findall(r"(?<![\w.])\d+\.\d\d+(?![\d.])", paragraph):
                if figure not in held:
                    missing.append(f"{page.name}: {figure} not in section(s) {', '.join(named)}")
    return missing


def test_docs_quote_only_figures_their_benchmarks_section_holds() -> None:
    assert quoted_figures_missing() == []
