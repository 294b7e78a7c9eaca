"""`charlstm inspect`: what a model does on a text, in the terminal or as a web page."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import argv_text, emit, run
from charlstm.cli.options import CheckpointArg, DeviceOption, Split, Unknown
from charlstm.errors import CharLSTMError

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


class InspectView(str, Enum):
    surprisal = "surprisal"
    neurons = "neurons"
    compare = "compare"


@app.command(
    name="inspect",
    epilog="Examples:  charlstm inspect checkpoints/tinyshakespeare-auto/best.pt  ·  charlstm "
    "inspect checkpoints/tinyshakespeare-auto/best.pt README.md --unknown skip --html "
    "readme.html  ·  charlstm inspect checkpoints/tinyshakespeare-auto/best.pt --prime "
    "'KING RICHARD III:' --view neurons --neuron 1:42  ·  charlstm inspect "
    "checkpoints/tinyshakespeare-auto/best.pt --against checkpoints/tinyshakespeare-auto/last.pt "
    "--view compare",
)
def inspect_(
    checkpoint: CheckpointArg,
    text: Annotated[
        str | None,
        typer.Argument(
            help="Text file to inspect, or - for stdin. Default: the start of the run's val split.",
            show_default=False,
        ),
    ] = None,
    prime: Annotated[
        str | None, typer.Option(help="Inspect this text, given on the command line.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="The most characters to inspect: a longer TEXT is refused (default 10,000); "
            "without TEXT, how many of the val split to show (default 3,000).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Tokenized folder for the default text (default: the run's)."),
    ] = None,
    split: Annotated[Split, typer.Option(help="Split the default text comes from.")] = Split.val,
    unknown: Annotated[
        Unknown, typer.Option(help="Characters outside the vocabulary: error, or skip them.")
    ] = Unknown.error,
    against: Annotated[
        Path | None,
        typer.Option(help="A second checkpoint (same vocabulary): colour the loss difference."),
    ] = None,
    neuron: Annotated[
        list[str] | None,
        typer.Option(
            help="Show this cell: LAYER:UNIT (0-based; both its c and h) or LAYER:UNIT:c / :h. "
            "Repeat for more.",
            metavar="LAYER:UNIT",
            show_default=False,
        ),
    ] = None,
    view: Annotated[
        list[InspectView] | None,
        typer.Option(
            help="Views for the terminal (repeatable). Default: surprisal, or the comparison "
            "with --against and the neurons with --neuron; none with --html or --json.",
            show_default=False,
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(help="Write every view as one self-contained web page to this file."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --html file.")] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the numbers (per-character bits, top guesses, "
            "cell ranking) as one JSON object on stdout.",
        ),
    ] = False,
    pager: Annotated[
        bool, typer.Option("--pager/--no-pager", help="Page long output on a terminal.")
    ] = True,
    device: DeviceOption = "auto",
    threads: Annotated[
        int,
        typer.Option(metavar="N", help="CPU threads (0: all cores; one pass, nothing to time)."),
    ] = 0,
) -> None:
    """See what the model learned, character by character, in the terminal or as a web page.

    Each character's surprisal with the model's top guesses, cells that track quotes, brackets,
    line position and more, and a comparison of two checkpoints."""
    import json

    from charlstm.inspection.analysis import inspect_text, to_dict
    from charlstm.inspection.html import check_html_path, write_html

    prime = argv_text(prime)
    if text is not None and prime is not None:
        ui.error("give a TEXT file or --prime, not both")
        raise typer.Exit(2)
    if view and InspectView.compare in view and against is None:
        ui.error("--view compare needs --against OTHER.pt")
        raise typer.Exit(2)
    if html is not None:
        run(check_html_path, html, force)  # before any work: nothing is computed in vain
    given, file, source = prime, None, "--prime" if prime is not None else None
    if text == "-":
        given, source = run(_read_stdin), "stdin"
    elif text is not None:
        file = Path(text)
    result = run(
        inspect_text,
        checkpoint,
        given,
        file=file,
        source=source,
        data=data,
        split=split.value,
        limit=limit,
        unknown=unknown.value,
        against=against,
        neurons=neuron or (),
        device=device,
        threads=threads,
    )
    if html is not None:
        size = run(write_html, result, html, force)
        ui.info(f"wrote {html} ({size / 1e6:.2f} MB): open it in a browser")
    if json_out:
        emit(json.dumps(to_dict(result)) + "\n")
    views = [v.value for v in view] if view else []
    if not view and html is None and not json_out:
        views = ["compare"] if against is not None else []
        views += ["neurons"] if neuron else []
        views = views or ["surprisal"]
    if views:
        ui.show_inspection(result, views, page=pager)
    elif not json_out:
        ui.show_inspect_summary(result)


def _read_stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharLSTMError(f"stdin is not valid UTF-8 (byte offset {e.start})") from None
