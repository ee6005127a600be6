"""The `groco` Typer app, its `index` group and what every command shares: the one-line
error, the help layout, the logging of index commands and the errors they turn into lines."""

from __future__ import annotations

import logging
import shutil
import sys

import typer

WIDE_TERMINAL = 100
"""Columns from which help is drawn in boxes; narrower terminals and pipes get plain help."""


def boxed_help() -> str | None:
    """Typer's ``rich_markup_mode``: boxes (``"rich"``) on a terminal at least
    :data:`WIDE_TERMINAL` columns wide, else plain help (``None``) whose option texts wrap
    under their names instead of in a narrow column."""
    wide = shutil.get_terminal_size((80, 24)).columns >= WIDE_TERMINAL
    return "rich" if sys.stdout.isatty() and wide else None


def help_context() -> dict:
    """Click's context settings: help up to 100 columns wide (the whole width of a narrower
    terminal; 100 when the output is not a terminal), ``-h`` as ``--help``."""
    context: dict = {"max_content_width": 100, "help_option_names": ["--help", "-h"]}
    if not sys.stdout.isatty():
        context["terminal_width"] = 100
    return context


CONTEXT = help_context()

app = typer.Typer(
    name="groco",
    help="Turn a folder of unlabeled images into a visual search engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=boxed_help(),
    context_settings=CONTEXT,
)
index_app = typer.Typer(help="Build, update and evaluate a FAISS index of a collection.",
                        no_args_is_help=True, rich_markup_mode=boxed_help(),
                        context_settings=CONTEXT)
app.add_typer(index_app, name="index")


def fail(error: Exception) -> None:
    """Print ``error: <first line>`` on stderr and exit 1."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def index_logging(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)


INDEX_ERRORS = (ValueError, KeyError, OSError, RuntimeError)
"""What index commands turn into one line on stderr and exit 1 (IndexDirError,
IndexMismatchError, EncoderError and ImageError are ValueErrors; FAISS raises RuntimeError)."""
