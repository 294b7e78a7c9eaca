"""How a command talks to the library and the user: call the library (a `CharLSTMError` is one
line on stderr and its exit code), and write data to stdout so that a pipe sees it at once."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import typer

from charlstm.cli import ui
from charlstm.errors import CharLSTMError

#: what each command leaves behind when Ctrl-C (exit 130) or SIGTERM (exit 143) stops it: the
#: rest of the one line after "interrupted; ". Every file charlstm writes appears whole or not
#: at all (`charlstm.atomic`), so these are the whole story; tests/test_interrupts.py checks
#: each one by stopping the command in the middle of its work.
KEPT_WHEN_STOPPED = {
    "tokenize": "nothing was written: the output folder appears whole or not at all",
    "train": "the run folder keeps its last saved checkpoint, whole (continue with --resume); "
    "a run stopped before its first save wrote nothing",
    "eval": "nothing was written",
    "sample": "the text printed so far was kept; an --output file is written whole or not at all",
    "inspect": "nothing was written (an --html page is written whole or not at all)",
    "report": "nothing was written (a --png is written whole or not at all)",
    "info": "nothing was written",
    "export": "nothing was written: the output folder is as it was",
    "serve": "the server stopped",
    "bench": "the bench's own work folder was removed (a --workdir keeps only what it held "
    "before); no partial file is left",
    "corpus": "no partial file was kept (a download that finished stays in the cache, checked)",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C: every `finally` and every atomic
    write's clean-up runs, and the command exits 143 with its one line."""


def _terminate(signum, frame):
    raise Terminated


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (Python's default would end the process on
    the spot, leaving partial files and child processes behind). `train` and `serve` put
    their own handlers in place while they run, for a graceful stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def argv_text(value: str | None) -> str | None:
    """Text given on the command line, as the user typed it. In an ASCII locale without UTF-8
    mode (`LC_ALL=C PYTHONUTF8=0`) Python decodes each argument's non-ASCII bytes to lone
    surrogates; the bytes of a terminal's text are UTF-8, so they are decoded as such. (Paths
    are left alone: the file system takes back exactly the bytes it gave.)"""
    if value is None or not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    try:
        return os.fsencode(value).decode("utf-8")
    except UnicodeDecodeError:
        return value


def utf8_stdout() -> None:
    """Data on stdout is UTF-8 whatever the locale says (an ASCII locale would refuse every
    character past 127 of a sampled text); stderr, for people, keeps the locale's encoding
    and escapes what it cannot show."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    if sys.stdout is not None and encoding != "utf8":
        # not a text stream we may change (a test harness's, a closed one): leave it
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[union-attr]


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
