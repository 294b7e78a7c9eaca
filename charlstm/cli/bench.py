"""`charlstm bench`: speed against this machine's own limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import choices, emit, run
from charlstm.config import PRESETS

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


@app.command(
    epilog="Examples:  charlstm bench  ·  charlstm bench --quick --json > bench.json  ·  "
    "charlstm bench --section sample --section train --preset small  ·  charlstm bench "
    "--device cuda --json > gpu.json",
)
def bench(
    preset: Annotated[
        list[choices("Preset", PRESETS)] | None,  # type: ignore[valid-type]
        typer.Option(help="Presets whose training speed to measure (repeat the option)."),
    ] = None,
    section: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these sections (repeat the option): limits, tokenize, train, eval, "
            "sample, memory."
        ),
    ] = None,
    corpus_mb: Annotated[int, typer.Option(help="Size of the generated big text (MB).")] = 100,
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Work folder, kept afterwards (its generated text and data are reused next "
            "time; a stopped bench removes what it added). Default: a private folder in the "
            "system's temporary folder ($TMPDIR), removed when the bench ends.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A trained small-preset checkpoint for the eval/sample sections."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="Measure training (fp32/tf32/bf16) and sampling on this device (cuda, cpu, "
            "...) against its matmul and memory limits: sections limits, train, sample. "
            "Default: the CPU suite above.",
            show_default=False,
        ),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Shorter timings, fewer presets.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Measure charlstm against this machine's own limits (matmul, memory bandwidth)."""
    import json

    presets = [p.value for p in preset] if preset else None
    sections = set(section) if section else None
    if device is not None:
        from charlstm.benchmark.device import run_device_bench

        report = run(run_device_bench, device, presets=presets, workdir=workdir, quick=quick,
                     sections=sections, progress=ui.info)  # fmt: skip
    else:
        from charlstm.benchmark.suite import run_bench

        report = run(run_bench, presets=presets, corpus_mb=corpus_mb, workdir=workdir,
                     quick=quick, sections=sections, checkpoint=checkpoint,
                     progress=ui.info)  # fmt: skip
    ui.show_bench(report)
    if json_out:
        emit(json.dumps(report.to_dict(), indent=2) + "\n")
