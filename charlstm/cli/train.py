"""`charlstm train`: one option per `TrainConfig` field (declared once, in the dataclass), over
`charlstm.training.trainer.train`."""

from __future__ import annotations

import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from charlstm.cli import ui
from charlstm.cli.io import run
from charlstm.cli.options import field_option
from charlstm.config import PRESETS, TrainConfig

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


def _config_option(f) -> inspect.Parameter:
    """A `train` option made from a TrainConfig field. Every option defaults to None ("not
    given"), so the preset's value (or, on --resume, the run's) stands unless the user sets it."""
    if f.name in PRESETS["small"]:  # (a backslash keeps Rich from reading [..] as markup)
        suffix = " \\[default: the preset's]"
    elif f.default is not None and f.type not in (bool, "bool") and not f.metadata.get("choices"):
        suffix = f" \\[default: {f.default}]"
    else:
        suffix = ""
    panel = (
        "How long, how often, where (may change on --resume)"
        if f.metadata.get("resumable")
        else "Model and training (fixed for a run)"
    )
    return field_option(TrainConfig, f, default=None, panel=panel, help_suffix=suffix)


def _train(
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Tokenized folder, or raw text file/folder (tokenized into a cache). Default: "
            "bundled tiny shakespeare; on --resume, the data the run was trained on."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder. Default: checkpoints/<data>-<preset>."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out from its folder alone (no options needed)."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Start the run in --out over.")] = False,
    allow_data_change: Annotated[
        bool, typer.Option("--allow-data-change", help="Resume on data that differs.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    **options: Any,
) -> None:
    """Train a multi-layer LSTM with truncated BPTT; writes last.pt, best.pt, metrics.jsonl."""
    from charlstm.training.distributed import from_environment
    from charlstm.training.trainer import train as train_model

    options = {k: v.value if isinstance(v, Enum) else v for k, v in options.items()}
    preset = options.pop("preset", None)
    result = run(
        train_model,
        data,
        out,
        preset=preset,
        resume=resume,
        force=force,
        allow_data_change=allow_data_change,
        reporter=ui.TrainProgress(quiet=quiet),
        **options,
    )
    main_rank = from_environment().is_main  # under torchrun, rank 0 speaks for all
    if not quiet and main_rank:
        ui.show_train(result)
    if main_rank and not result.interrupted:
        ui.show_verdict(result, quiet)
    if result.interrupted:
        if quiet and main_rank:
            ui.warn(f"interrupted: {result.run_dir / 'last.pt'} saved; continue with --resume")
        raise typer.Exit(130)


def _train_command():
    """`_train` with one option per TrainConfig field appended to its signature."""
    fixed = [
        p
        for p in inspect.signature(_train, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    params = fixed + [_config_option(f) for f in TrainConfig.options()]

    def train(**kwargs: Any) -> None:
        _train(**kwargs)

    train.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in params}
    train.__doc__ = _train.__doc__
    return train


app.command(
    name="train",
    epilog="Examples:  charlstm train --time-budget 10 --out checkpoints/ts10  ·  charlstm train "
    "--resume --time-budget 5  ·  charlstm train data/tinyshakespeare --preset tiny --steps 500 "
    "--out checkpoints/tiny  then  charlstm train --out checkpoints/tiny --resume --steps 1000",
)(_train_command())
