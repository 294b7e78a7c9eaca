"""`charlstm tokenize` and `charlstm corpus list|get`: from a text to token arrays."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import run

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


class Level(str, Enum):
    char = "char"
    byte = "byte"


class Normalize(str, Enum):
    none = "none"
    nfc = "nfc"
    nfkc = "nfkc"


@app.command(
    epilog="Examples:  charlstm tokenize --out data/ts-chars  ·  charlstm tokenize "
    "corpora/tinyshakespeare.txt --out data/ts-bytes --level byte --val-frac 0.05 --test-frac "
    "0.05",
)
def tokenize(
    corpus: Annotated[
        Path | None,
        typer.Argument(
            help="Text file, or folder of text files (sorted). Default: bundled tiny shakespeare."
        ),
    ] = None,
    out: Annotated[
        Path | None,
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
        float | None,
        typer.Option(
            help="Fraction of the text (from the end) for validation. Default: 0.1, "
            "or the standard split of a corpus from `charlstm corpus get`."
        ),
    ] = None,
    test_frac: Annotated[
        float | None,
        typer.Option(
            help="Fraction of the text (the very end) held out for testing. "
            "Default: 0, or the corpus's standard split."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing output folder of an earlier tokenize."),
    ] = False,
) -> None:
    """Tokenize a corpus into train/val/test id arrays, tokenizer.json and meta.json."""
    from charlstm.data.prepare import tokenize as tokenize_corpus

    result = run(
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


corpus_app = typer.Typer(
    help="The standard corpora: list them, download one.", no_args_is_help=True
)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command(name="list", epilog="Example:  charlstm corpus list")
def corpus_list() -> None:
    """The corpora `charlstm corpus get` knows: size, split, source, licence."""
    from charlstm.data.catalog import CATALOG

    ui.show_catalog(CATALOG.values())


@corpus_app.command(
    name="get",
    epilog="Examples:  charlstm corpus get enwik8  ·  charlstm corpus get text8 --dir corpora/ "
    "&& charlstm tokenize corpora/text8 --level byte",
)
def corpus_get(
    name: Annotated[str, typer.Argument(help="tinyshakespeare, enwik8 or text8.")],
    dir: Annotated[Path, typer.Option("--dir", help="Folder to put it in.")] = Path("corpora"),
    url: Annotated[str | None, typer.Option(help="Download from this mirror instead.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace it if present (a cached download whose sha256 still matches is reused).",
        ),
    ] = False,
) -> None:
    """Download a standard corpus, verify it, unpack it and record its standard split."""
    from charlstm.data.catalog import fetch

    with ui.download_progress(name) as advance:
        path = run(fetch, name, dir, url=url, force=force, progress=advance)
    ui.info(f"{path} ready; next: charlstm tokenize {path}")
