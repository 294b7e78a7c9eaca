"""`charlstm serve`: the OpenAI-compatible HTTP server over a checkpoint."""

from __future__ import annotations

import logging
import os
import sys
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
    "http://127.0.0.1:8000/)  ·  charlstm serve checkpoints/tinyshakespeare-auto/best.pt "
    "--port 0 --api-key s3cret  ·  curl http://127.0.0.1:8000/v1/completions -H "
    "'Content-Type: application/json' -d "
    '\'{"model": "tinyshakespeare-auto", "prompt": "ROMEO:", "max_tokens": 200}\'',
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
            help="Require 'Authorization: Bearer KEY' on every API request (default: the "
            "CHARLSTM_API_KEY environment variable; set but empty is refused).",
            show_default=False,
        ),
    ] = None,
    limits: ServeLimits = ServeLimits(),
    dtype: Annotated[
        SampleDtype, typer.Option(help="Weight precision for generation (bf16 reads half).")
    ] = SampleDtype.fp32,
    threads: Annotated[
        int, typer.Option(help="CPU threads for the model (0: chosen by timing the batch).")
    ] = 0,
    grace_s: Annotated[
        float,
        typer.Option(help="After SIGTERM / Ctrl-C, seconds running requests may take to finish."),
    ] = 3.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No access log (one line per request on stderr).")
    ] = False,
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
    from charlstm.serving.server import API_KEY_ENV, serve_available
    from charlstm.serving.server import serve as serve_checkpoint

    if not serve_available():
        ui.error("charlstm serve needs FastAPI and uvicorn: pip install 'charlstm[serve]'")
        raise typer.Exit(1)
    if api_key is None:
        # read here, not through Click's envvar: Click treats an empty variable as unset, and
        # an empty secret from a deploy script must be refused, not served without a key
        api_key = os.environ.get(API_KEY_ENV)
    run(serve_checkpoint, checkpoint, host=host, port=port, api_key=api_key, limits=limits,
         device=device, dtype=dtype.value, threads=threads, grace_s=grace_s,
         unknown=unknown.value, chat_template=chat_template,
         on_ready=lambda facts: _ready(facts, quiet))  # fmt: skip
    ui.info("stopped")


def _ready(facts, quiet: bool) -> None:
    ui.show_serving(facts)
    _log_to_stderr(quiet)


def _log_to_stderr(quiet: bool) -> None:
    """The server's log (access lines, failures) as plain lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("charlstm.serve")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for name in ("charlstm.serve.access", "charlstm.serve.threads"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)
