"""The ``slimserve`` command: every subcommand is a thin call into the library."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from slimserve.errors import SlimserveError

app = typer.Typer(
    name="slimserve",
    help="Prune, quantize, export, measure and serve models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """A SlimserveError is the user's to fix: one message, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimserveError as exc:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from slimserve import __version__

        console.print(f"slimserve {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """slimserve: make a trained model ready for serving, and prove what it cost."""
    _state["debug"] = debug


def print_stages(stages: list[dict[str, Any]], title: str = "Stages") -> None:
    """Print the stage comparison table (the same one report.md holds)."""
    from slimserve.report import stage_table

    headers, rows = stage_table(stages, compact=True)
    table = Table(title=title, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
@_user_errors
def optimize(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder for the artifact."),
) -> None:
    """Run a recipe (prune -> fine-tune -> quantize -> export) and save an artifact."""
    from slimserve.recipe import load_recipe

    _optimize(load_recipe(recipe), out)


def _optimize(recipe: Any, out: Path) -> None:
    from slimserve.pipeline import run_recipe

    result = run_recipe(recipe, out, console=console)
    print_stages([s.row() for s in result.stages], title=f"{recipe.name}: every stage")
    for note in result.notes:
        console.print(note, highlight=False)
    console.print(f"Artifact: {result.artifact.path}", highlight=False)
    console.print(f"Report:   {result.artifact.path / 'report.md'}", highlight=False)


@app.command()
@_user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the artifact."),
    repeats: int | None = typer.Option(
        None, "--repeats", min=3, help="Timed runs per stage (default: the recipe's)."
    ),
) -> None:
    """Run the bundled digits example end to end and print the comparison table."""
    from importlib.resources import files

    from slimserve.recipe import load_recipe

    recipe_path = Path(str(files("slimserve.examples") / "digits.yaml"))
    recipe = load_recipe(recipe_path)
    if repeats is not None:
        bench = recipe.bench.model_copy(update={"repeats": repeats})
        recipe = recipe.model_copy(update={"bench": bench})
    _optimize(recipe, out)


@app.command()
@_user_errors
def inspect(
    model: str = typer.Argument(..., help="Model file, 'pkg.mod:fn' factory, or artifact."),
) -> None:
    """Show a model's inputs/outputs, a per-layer table and its size raw and compressed."""
    from slimserve.models import load
    from slimserve.report import human_bytes
    from slimserve.summary import summarize

    path = Path(model)
    if path.is_dir():
        from slimserve.artifact import load_artifact

        artifact = load_artifact(path)
        console.print(
            f"Artifact [bold]{artifact.manifest.name}[/]: steps "
            f"{' -> '.join(s.name for s in artifact.manifest.steps) or '(none)'}; "
            "all file hashes verified.",
            highlight=False,
        )
        loaded: Any = artifact.model
    else:
        loaded = load(model)
    summary = summarize(loaded)
    io_table = Table(title="Inputs and outputs", title_justify="left")
    for column in ("kind", "name", "dtype", "shape"):
        io_table.add_column(column)
    for kind, items in (("input", summary.inputs), ("output", summary.outputs)):
        for t in items:
            io_table.add_row(kind, t["name"], t["dtype"], str(t["shape"]))
    console.print(io_table)
    layers = Table(title="Layers with weights", title_justify="left")
    for column in ("name", "op", "params", "dtype", "sparsity"):
        layers.add_column(column, justify="right" if column in ("params", "sparsity") else "left")
    for layer in summary.layers:
        layers.add_row(
            layer.name, layer.op, f"{layer.params:,}", layer.dtype, f"{layer.sparsity:.1%}"
        )
    console.print(layers)
    console.print(
        f"{summary.format} model: {summary.params:,} parameters, sparsity "
        f"{summary.sparsity:.1%}, size {human_bytes(summary.size_bytes)} raw, "
        f"{human_bytes(summary.compressed_bytes)} gzip-compressed",
        highlight=False,
    )


def main() -> None:
    """Console-script entry point."""
    app()
