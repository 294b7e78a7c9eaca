"""How a command talks to the library and the user: call the library (a `CharLSTMError` is one
line on stderr and its exit code), and write data to stdout so that a pipe sees it at once."""

from __future__ import annotations

import sys
from enum import Enum

import typer

from charlstm.cli import ui
from charlstm.errors import CharLSTMError


def run(fn, *args, **kwargs):
    """Call the library; a CharLSTMError becomes one line on stderr and its exit code (1, or
    2 for a bad option value)."""
    try:
        return fn(*args, **kwargs)
    except CharLSTMError as e:
        ui.error(str(e))
        raise typer.Exit(e.exit_code) from None


def choices(name: str, values) -> type[Enum]:
    """A str Enum of `values`: how Typer spells a fixed set of choices."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


class StdoutClosed(Exception):
    """Standard output's reader closed the pipe."""


def emit(text: str) -> None:
    """Data to stdout (and flushed, so a pipe sees it at once). A full disk or a closed stdout
    is one line on stderr; a reader that went away ends the command quietly."""
    try:
        if sys.stdout is None:  # started with stdout closed (`>&-`)
            raise OSError(9, "it is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise CharLSTMError(
            f"cannot write to standard output: {reason}",
            "redirect it to a file with room, or use --output where the command has it",
        ) from None
