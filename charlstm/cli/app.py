"""The `charlstm` command line: parse, call the library, print. The only module that knows
Typer. Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage error (an unknown option, a
malformed or out-of-range value), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM, 141 stdout
closed by its reader (`| head`). An interruption is one line that says what was kept.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from charlstm.cli import bench, data, evaluate, export, generate, inspect, runs, serve, train, ui
from charlstm.cli.io import (
    KEPT_WHEN_STOPPED,
    StdoutClosed,
    Terminated,
    emit,
    stop_on_sigterm,
    utf8_stdout,
)
from charlstm.errors import CharLSTMError
from charlstm.version import __version__


def _click_class(name: str) -> type:
    """Click's exception class `name`, whether Typer uses click or its own vendored copy."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


HELP_OPTIONS = ["-h", "--help"]


def _hide_flag_types(command) -> None:
    """An on/off flag takes no value, so its help shows no type: Typer would print `<bool>`.
    (The help option is made on first use and then kept: make it now, with the names every
    command's context inherits from the app's, to reach it too.)"""
    context = command.context_class(command, help_option_names=HELP_OPTIONS)
    for param in [*command.params, command.get_help_option(context)]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


class _Stopped(Exception):
    """A KeyboardInterrupt (Ctrl-C) or a `Terminated` (SIGTERM) out of a command, carried past
    Typer's own handling to `_Group.main`."""

    def __init__(self, terminated: bool) -> None:
        super().__init__()
        self.terminated = terminated


class _Group(TyperGroup):
    """Typer group whose usage errors are one line on stderr (exit 2), like every other error."""

    def invoke(self, ctx):
        # Typer turns a KeyboardInterrupt into a silent exit 130 (newer versions) or Click's
        # "Aborted!": take it first, to say what was kept
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise _Stopped(isinstance(e, Terminated)) from None

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        self.invoked = name  # whose line an interruption prints
        return name, command, rest

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _hide_flag_types(self)
        utf8_stdout()
        self.invoked = None
        try:
            with stop_on_sigterm():
                rc = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:
                # `charlstm` (or `charlstm corpus`) alone: the help (Typer's Rich help has
                # already printed itself while the error was made; plain help is the message)
                if e.format_message().strip():
                    emit(e.format_message() + "\n")
                rc = 0
                if standalone_mode:
                    sys.exit(rc)
                return rc
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            ui.error(f"{e.format_message()}{hint}")
            rc = 2
        except _ClickException as e:
            ui.error(e.format_message())
            rc = e.exit_code
        except (_Stopped, typer.Abort, KeyboardInterrupt) as e:
            # typer.Abort: how Click reports a Ctrl-C inside itself (a prompt, a callback)
            terminated = isinstance(e, Terminated) or getattr(e, "terminated", False)
            kept = KEPT_WHEN_STOPPED.get(self.invoked or "", "nothing was written")
            ui.error(f"{'stopped (SIGTERM)' if terminated else 'interrupted'}; {kept}")
            rc = 143 if terminated else 130
        except StdoutClosed:
            # the reader went away (`charlstm sample ... | head`): stop quietly, as `cat` does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            rc = 141
        except CharLSTMError as e:  # raised outside a command's _run (help on a bad stdout)
            ui.error(str(e))
            rc = e.exit_code
        except Exception as e:  # a bug, not a user error: one line unless --verbose
            if _verbose:
                raise
            ui.error(
                f"unexpected {type(e).__name__}: {e} (rerun with --verbose for the "
                "traceback, and please report it)"
            )
            rc = 1
        if standalone_mode:
            sys.exit(rc or 0)
        return rc


app = typer.Typer(
    cls=_Group,
    name="charlstm",
    help="Character-level language modeling with multi-layer LSTMs: tokenize, train, eval, sample.",
    epilog="Example:  charlstm train --time-budget 10 --out checkpoints/ts10  then  charlstm "
    "sample checkpoints/ts10/best.pt --prime 'ROMEO:'",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTIONS},
    rich_markup_mode="rich",
)

_verbose = False


def _version(value: bool) -> None:
    if value:
        print(f"charlstm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks for unexpected errors.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and data on the terminal.")
    ] = False,
) -> None:
    """charlstm: train a character-level LSTM language model on your own text."""
    global _verbose
    _verbose = verbose
    ui.set_quiet(quiet)


# the commands, in the order `charlstm --help` lists them: the data flow, then the tools around it
for _commands in (data, train, evaluate, generate, inspect, runs, export, serve, bench):
    app.add_typer(_commands.app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="charlstm")
