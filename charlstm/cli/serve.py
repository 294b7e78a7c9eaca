"""`charlstm serve`: the OpenAI-compatible HTTP server over a checkpoint."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import run
from charlstm.cli.options import CheckpointArg, DeviceOption, SampleDtype, with_options
from charlstm.serving.limits import ServeLimits


class UnknownChars(str, Enum):
    error = "error"
    skip = "skip"
    replace = "replace"


app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


@app.command(
    epilog="Examples:  charlstm serve checkpoints/tinyshakespeare-auto/best.pt  (then open "
    "http://127.0.0.1:8000/)  ·  charlstm serve run/best.pt --port 0 --api-key s3cret  ·  "
    "curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d "
    '\'{"model": "RUN", "prompt": "ROMEO:", "max_tokens": 200}\'',
)
@with_options(limits=(ServeLimits, "Limits (what one request may ask for)"))
def serve(
    checkpoint: CheckpointArg,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 opens it to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free one).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CHARLSTM_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every API request.",
            show_default=False,
        ),
    ] = None,
    limits: ServeLimits = ServeLimits(),
    dtype: Annotated[
        SampleDtype, typer.Option(help="Weight precision for generation (bf16 reads half).")
    ] = SampleDtype.fp32,
    threads: Annotated[
        int, typer.Option(help="CPU threads for the model (0: PyTorch's default).")
    ] = 0,
    device: DeviceOption = "cpu",
    unknown: Annotated[
        UnknownChars,
        typer.Option(
            help="Characters of a prompt or message that the vocabulary lacks: refuse the "
            "request (400), skip them, or replace them (by U+FFFD, '?' or a space)."
        ),
    ] = UnknownChars.error,
    chat_template: Annotated[
        Path | None,
        typer.Option(
            help="A JSON file: how /v1/chat/completions renders a chat into a prompt "
            "(default: USER:/ASSISTANT: turns, see docs/serve.md).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a checkpoint over HTTP with OpenAI's API and a playground page.

    The openai client and curl work unchanged; concurrent requests share one batch."""
    from charlstm.serving.server import serve as serve_checkpoint
    from charlstm.serving.server import serve_available

    if not serve_available():
        ui.error("charlstm serve needs FastAPI and uvicorn: pip install 'charlstm[serve]'")
        raise typer.Exit(1)
    run(serve_checkpoint, checkpoint, host=host, port=port, api_key=api_key, limits=limits,
         device=device, dtype=dtype.value, threads=threads, unknown=unknown.value,
         chat_template=chat_template,
         on_ready=ui.show_serving)  # fmt: skip
    ui.info("stopped")
