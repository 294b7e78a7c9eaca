"""`charlstm report` and `charlstm info`: what a run folder and a checkpoint hold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import emit, run
from charlstm.cli.options import CheckpointArg

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


@app.command(
    epilog="Examples:  charlstm report checkpoints/tinyshakespeare-auto  ·  charlstm report "
    "checkpoints/tinyshakespeare-auto --png curves.png",
)
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder of `charlstm train`.")],
    png: Annotated[
        Path | None, typer.Option(help="Also write the plot to this PNG (needs matplotlib).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """Learning curves of a run (train and val loss vs characters seen) and its summary."""
    import json

    from charlstm.training.report import read_curves, write_png

    curves = run(read_curves, run_dir)
    if json_out:
        emit(json.dumps(curves.summary(), indent=2) + "\n")
    else:
        ui.show_report(curves)
    if png is not None:
        run(write_png, curves, png, str(run_dir))
        ui.info(f"wrote {png}")


@app.command(
    epilog="Examples:  charlstm info checkpoints/tinyshakespeare-auto/best.pt  ·  "
    "charlstm info checkpoints/tinyshakespeare-auto/last.pt --json | jq .best_val",
)
def info(
    checkpoint: CheckpointArg,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """What a checkpoint holds: model, vocabulary, training progress, best validation."""
    import json

    from charlstm.model.checkpoint import describe

    facts = run(describe, checkpoint)
    if json_out:
        emit(json.dumps(facts, indent=2) + "\n")
    else:
        ui.show_info(facts)
