"""Arguments and options that several commands share, declared once."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

DeviceOption = Annotated[
    str,
    typer.Option(help="Where to run: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
]

CheckpointArg = Annotated[
    Path,
    typer.Argument(
        help="A checkpoint written by `charlstm train` (best.pt or last.pt), or a model folder "
        "written by `charlstm export --format safetensors`."
    ),
]


class Split(str, Enum):
    val = "val"
    test = "test"
    train = "train"


class Unknown(str, Enum):
    error = "error"
    skip = "skip"


class SampleDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
