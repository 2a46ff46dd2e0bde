"""What every command shares: the Typer app, the consoles, the user-error wrapper and
the one table renderer (every table the CLI prints goes through ``print_table``)."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from slimserve.core.errors import SlimserveError

app = typer.Typer(
    name="slimserve",
    help="Prune, quantize, export, measure and serve models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help is plain text: as rich markup, "(extra [mlflow])" lost its "[mlflow]".
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """A SlimserveError is the user's to fix: one message, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimserveError as exc:
            if _state["debug"]:
                raise
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from slimserve.core.version import __version__

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


C = TypeVar("C", bound=BaseModel)


def build_config(command: str, config_class: type[C], **fields: Any) -> C:
    """``config_class(**fields)``, a validation error turned into one user message."""
    try:
        return config_class(**fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise SlimserveError(f"{command}: {where}: {problem['msg']}.") from None


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    left: Collection[str] | None = None,
    show_header: bool = True,
    to: Console | None = None,
) -> None:
    """Print one table: the columns in ``left`` (default: the first) left-aligned, the
    rest (numbers) right-aligned."""
    left = {columns[0]} if left is None else set(left)
    table = Table(title=title, title_justify="left", show_header=show_header)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    for row in rows:
        table.add_row(*row)
    target = to or console
    if target.is_terminal or "COLUMNS" in os.environ:
        target.print(table)
        return
    # Off a terminal (CI logs, pipes) rich assumes 80 columns and wraps every cell;
    # there is no screen to fit, so the table gets the width its content needs.
    wide = target.options.update(width=OFF_TERMINAL_MAX_WIDTH)
    width = max(Measurement.get(target, wide, table).maximum, 40)
    Console(file=target.file, width=width, no_color=target.no_color, highlight=False).print(table)


OFF_TERMINAL_MAX_WIDTH = 400


def print_stages(stages: list[dict[str, Any]], title: str = "Stages") -> None:
    """Print the stage comparison table (the same one report.md holds)."""
    from slimserve.measure.report import stage_table

    headers, rows = stage_table(stages, compact=True)
    print_table(title, headers, rows)


@contextlib.contextmanager
def activity(label: str) -> Iterator[Callable[[str, float | None], None]]:
    """``update(message, done)`` for long work: a spinner on a terminal; off one (CI logs,
    pipes), plain lines with the time elapsed and, when ``done`` is known, left."""
    if console.is_terminal:
        with console.status(label) as status:

            def update(message: str, done: float | None = None) -> None:
                status.update(message)

            yield update
        return
    from slimserve.core.progress import plain_reporter

    report = plain_reporter(lambda line: console.print(line, highlight=False), label)
    report("started", None)
    yield report
