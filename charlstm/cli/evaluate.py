"""`charlstm eval`: exact, windowed, dynamic and cached scoring of a checkpoint."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import emit, run
from charlstm.cli.options import (
    CheckpointArg,
    DeviceOption,
    Split,
    ThreadsOption,
    Unknown,
    with_options,
)
from charlstm.config import PRECISIONS
from charlstm.evaluation.continuous_cache import CacheSettings
from charlstm.evaluation.dynamic import DynamicSettings

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


EvalPrecision = Enum("EvalPrecision", {p: p for p in PRECISIONS}, type=str)  # train's choices


@app.command(
    name="eval",
    epilog="Examples:  charlstm eval checkpoints/tinyshakespeare-auto/best.pt  ·  charlstm eval "
    "checkpoints/tinyshakespeare-auto/best.pt --text README.md --unknown skip --json",
)
@with_options(  # (a bad value is refused even without --dynamic / --cache)
    dynamic_settings=(DynamicSettings, "Dynamic evaluation (with --dynamic)"),
    cache_settings=(CacheSettings, "Continuous cache (with --cache)"),
)
def eval_(
    checkpoint: CheckpointArg,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Tokenized folder. Default: the run's own data. With --dynamic, also where "
            "the gradient statistics come from (its train split)."
        ),
    ] = None,
    split: Annotated[
        Split | None, typer.Option(help="Split to score. Default: test if non-empty, else val.")
    ] = None,
    text: Annotated[
        Path | None, typer.Option(help="Score this text file instead of a split.")
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Contiguous streams scored side by side (1: the reference).")
    ] = 1,
    unknown: Annotated[
        Unknown, typer.Option(help="Characters outside the vocabulary: error, or skip them.")
    ] = Unknown.error,
    window: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Give every character at most N characters of context (windows of N every "
            "N/2 characters, each from a zero state; every character scored once).",
        ),
    ] = None,
    window_hop: Annotated[
        int | None,
        typer.Option(
            metavar="S",
            help="With --window N: start a window every S characters (default N/2); each "
            "character then sees N-S+1..N characters (S = N: disjoint blocks, 1..N).",
        ),
    ] = None,
    dynamic: Annotated[
        bool,
        typer.Option(
            "--dynamic",
            help="Dynamic evaluation: adapt the weights to the text as it is scored (each "
            "character still predicted before it is seen). Reported as mode 'dynamic'.",
        ),
    ] = False,
    dynamic_settings: DynamicSettings = DynamicSettings(),
    cache: Annotated[
        bool,
        typer.Option(
            "--cache",
            help="Mix in a continuous cache of recent hidden states (Grave et al. 2017). "
            "Reported as mode 'cache'.",
        ),
    ] = False,
    cache_settings: CacheSettings = CacheSettings(),
    precision: Annotated[
        EvalPrecision,
        typer.Option(
            help="auto: fp32 on a CPU (the exact number), on a GPU as training there (bf16 "
            "autocast or TF32). tf32: TF32 matmuls on a GPU. bf16 on a CPU: training's bf16 "
            "LSTM kernel, faster with bf16 units, off by bf16 rounding."
        ),
    ] = EvalPrecision.auto,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 0,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """Exact perplexity and bits per character of a checkpoint on held-out text."""
    import json

    from charlstm.evaluation.scoring import evaluate

    result = run(
        evaluate,
        checkpoint,
        data=data,
        split=split.value if split else None,
        text=text,
        batch_size=batch_size,
        device=device,
        unknown=unknown.value,
        window=window,
        window_hop=window_hop,
        dynamic=dynamic_settings if dynamic else None,
        cache=cache_settings if cache else None,
        precision=precision.value,
        threads=threads,
    )
    if result.streams < result.streams_asked:
        ui.warn(
            f"scored {result.streams} streams, not {result.streams_asked}: each stream needs at "
            f"least 1,000 characters (its first ones are predicted from a fresh state)"
        )
    if json_out:
        emit(json.dumps(result.to_dict()) + "\n")
    else:
        ui.show_eval(result)
