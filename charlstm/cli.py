"""The `charlstm` command line: parse, validate, call the library, print. The only module that
knows Typer. Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage, 130 interrupted."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from charlstm import __version__, ui
from charlstm.errors import CharLSTMError


def _click_class(name: str) -> type:
    """Click's exception class `name`, whether Typer uses click or its own vendored copy."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


class _Group(TyperGroup):
    """Typer group whose usage errors are one line on stderr (exit 2), like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rc = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            ui.error(f"{e.format_message()}{hint}")
            rc = 2
        except _ClickException as e:
            ui.error(e.format_message())
            rc = e.exit_code
        except (typer.Abort, KeyboardInterrupt):
            ui.error("interrupted")
            rc = 130
        if standalone_mode:
            sys.exit(rc or 0)
        return rc


app = typer.Typer(
    cls=_Group,
    name="charlstm",
    help="Character-level language modeling with multi-layer LSTMs: tokenize, train, eval, "
    "sample.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
) -> None:
    """charlstm: train a character-level LSTM language model on your own text."""
    global _verbose
    _verbose = verbose


def _run(fn, *args, **kwargs):
    """Call the library; a CharLSTMError becomes one line on stderr and exit 1."""
    try:
        return fn(*args, **kwargs)
    except CharLSTMError as e:
        ui.error(str(e))
        raise typer.Exit(1) from None


class Level(str, Enum):
    char = "char"
    byte = "byte"


class Normalize(str, Enum):
    none = "none"
    nfc = "nfc"
    nfkc = "nfkc"


@app.command(
    epilog="Examples:  charlstm tokenize  ·  charlstm tokenize my.txt --out data/my "
    "--level byte --val-frac 0.05 --test-frac 0.05",
)
def tokenize(
    corpus: Annotated[
        Optional[Path],
        typer.Argument(help="Text file, or folder of text files (sorted). Default: bundled "
                       "tiny shakespeare."),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Output folder. Default: data/<corpus name>."),
    ] = None,
    level: Annotated[
        Level, typer.Option(help="char: Unicode characters; byte: the 256 UTF-8 byte values.")
    ] = Level.char,
    normalize: Annotated[
        Normalize, typer.Option(help="Unicode normalization before tokenizing.")
    ] = Normalize.none,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Lowercase the text.")] = False,
    val_frac: Annotated[
        float, typer.Option(help="Fraction of the text (from the end) for validation.")
    ] = 0.1,
    test_frac: Annotated[
        float, typer.Option(help="Fraction of the text (the very end) held out for testing.")
    ] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
) -> None:
    """Tokenize a corpus into train/val/test id arrays, tokenizer.json and meta.json."""
    from charlstm.prepare import tokenize as tokenize_corpus

    result = _run(
        tokenize_corpus,
        corpus,
        out,
        level=level.value,
        normalize=normalize.value,
        lowercase=lowercase,
        val_frac=val_frac,
        test_frac=test_frac,
        force=force,
    )
    ui.show_tokenize(result)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="charlstm")
