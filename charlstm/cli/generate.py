"""`charlstm sample`: text from a checkpoint; the text is all that goes to stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlstm.cli import ui
from charlstm.cli.io import argv_text, emit, run
from charlstm.cli.options import CheckpointArg, DeviceOption, SampleDtype, ThreadsOption

app = typer.Typer()  # merged into the `charlstm` group by charlstm.cli.app


@app.command(
    epilog="Examples:  charlstm sample checkpoints/tinyshakespeare-auto/best.pt --prime "
    "'ROMEO:' --length 300 --temperature 0.8 --seed 1  ·  charlstm sample "
    "checkpoints/tinyshakespeare-auto/best.pt --num-samples 4 --top-p 0.9 --json  ·  charlstm "
    "sample checkpoints/tinyshakespeare-auto/best.pt --output samples.txt",
)
def sample(
    checkpoint: CheckpointArg,
    prime: Annotated[str | None, typer.Option(help="Text to start from (printed first).")] = None,
    prime_file: Annotated[
        Path | None, typer.Option(help="Read the prime text from a file.")
    ] = None,
    length: Annotated[int, typer.Option(help="Characters to generate after the prime.")] = 500,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature; 0 is greedy (argmax).")
    ] = 1.0,
    top_k: Annotated[int, typer.Option(help="Keep the k most likely characters (0: off).")] = 0,
    top_p: Annotated[
        float, typer.Option(help="Nucleus: keep the smallest set with this much mass (1: off).")
    ] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible samples.")] = None,
    num_samples: Annotated[
        int,
        typer.Option(help="Samples generated in one batch, separated by a blank line (or --json)."),
    ] = 1,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the samples as one JSON list of strings."),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.")
    ] = False,
    dtype: Annotated[
        SampleDtype, typer.Option(help="Weight precision for generation (bf16 reads half).")
    ] = SampleDtype.fp32,
    adapt: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="First adapt the weights to this document (dynamic evaluation), then "
            "generate in its style, continuing from it. The document is not printed.",
        ),
    ] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = 0,
) -> None:
    """Generate text from a checkpoint; the text (prime first) is all that goes to stdout."""
    import json

    prime = argv_text(prime)

    from charlstm.generation.sampling import (
        check_output,
        format_samples,
        generate,
        read_prime_file,
        save_samples,
    )

    if prime is not None and prime_file is not None:
        ui.error("give --prime or --prime-file, not both")
        raise typer.Exit(2)
    if prime_file is not None:
        prime = run(read_prime_file, prime_file)
    if output is not None:
        run(check_output, output, force)  # before spending time on generating
    stream = num_samples == 1 and output is None and not json_out
    texts = run(
        generate,
        checkpoint,
        prime=prime,
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        num_samples=num_samples,
        device=device,
        dtype=dtype.value,
        on_text=(lambda _sample, piece: emit(piece)) if stream else None,
        adapt=adapt,
        threads=threads,
    )
    if stream:
        emit("\n")
    elif output is not None:
        run(save_samples, texts, output, as_json=json_out, force=force)
        ui.info(f"wrote {len(texts)} sample(s) to {output}")
    elif json_out:
        emit(json.dumps(texts, ensure_ascii=False) + "\n")
    else:
        emit(format_samples(texts))
