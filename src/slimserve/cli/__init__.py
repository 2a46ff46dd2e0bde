"""The ``slimserve`` command: every subcommand is a thin call into the library.

The commands live by job in ``build`` (optimize, demo, tune), ``oneline`` (export,
quantize, prune: a one-step recipe from flags), ``measure`` (inspect, eval, bench,
report, check, preflight) and ``serving`` (serve, loadtest, deploy); each
registers itself on the one Typer ``app`` in ``base``."""

from __future__ import annotations

from slimserve.cli import build, generation, measure, oneline, serving
from slimserve.cli.base import app, print_stages, print_table
from slimserve.cli.measure import UNDECIDED_EXIT

__all__ = [
    "UNDECIDED_EXIT",
    "app",
    "build",
    "generation",
    "main",
    "measure",
    "oneline",
    "print_stages",
    "print_table",
    "serving",
]


def main() -> None:
    """Console-script entry point."""
    app()
