"""`charlstm export`: a checkpoint as ONNX graphs, an offline web page, or a safetensors model
folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import emit, run
from charlstm.cli.options import CheckpointArg

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


class ExportFormat(str, Enum):
    onnx = "onnx"
    web = "web"
    safetensors = "safetensors"


@app.command(
    name="export",
    epilog="Examples:  charlstm export checkpoints/tinyshakespeare-auto/best.pt --format web "
    "--out ts-web  (then open ts-web/index.html)  ·  charlstm export "
    "checkpoints/tinyshakespeare-auto/best.pt --format onnx --out ts-onnx  then  python "
    "examples/onnx_sample.py ts-onnx --prime 'ROMEO:'  ·  charlstm export "
    "checkpoints/tinyshakespeare-auto/best.pt --format safetensors --out ts-model  then  "
    "charlstm sample ts-model",
)
def export_(
    checkpoint: CheckpointArg,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="onnx: prime and one-step graphs for onnxruntime (needs the export extra); "
            "web: a static page that samples in the browser, offline; safetensors: "
            "model.safetensors, config.json and tokenizer.json, a folder every command and "
            "plain PyTorch load (needs the safetensors extra).",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output folder. Default: export-<format> beside the checkpoint."
        ),
    ] = None,  # fmt: skip
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier export in --out.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="onnx: check onnxruntime's logits against PyTorch's over 1,000 steps before "
            "writing (when onnxruntime is installed).",
        ),
    ] = True,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON on stdout.")
    ] = False,
) -> None:
    """Export a checkpoint: ONNX graphs for any ONNX runtime, a page that runs offline, or a
    safetensors model folder."""
    import json

    from charlstm.export import formats as exporting

    if format == ExportFormat.onnx:
        if verify and not exporting.onnxruntime_available():
            ui.warn("onnxruntime is not installed: the export is not verified against PyTorch "
                    "(pip install 'charlstm[export]')")  # fmt: skip
        result = run(exporting.export_onnx, checkpoint, out, force=force, verify=verify)
    elif format == ExportFormat.web:
        result = run(exporting.export_web, checkpoint, out, force=force)
    else:
        result = run(exporting.export_safetensors, checkpoint, out, force=force)
    ui.show_export(result)
    if json_out:
        emit(json.dumps(result.to_dict(), indent=2) + "\n")
