"""Arguments and options that several commands share, declared once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

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


# -- options declared once, in a dataclass ------------------------------------------------------
# A field made with `charlstm.config.option(default, help, flag=..., metavar=..., choices=...)`
# is a command-line option: its flag, type, help and default come from the field, so the
# library's dataclass and the command cannot drift apart.


def option_fields(cls) -> list:
    """The fields of `cls` that are command-line options (those with a help text)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def field_option(
    cls, f, *, name: str | None = None, default: Any = ..., panel: str | None = None,
    help_suffix: str = "",
) -> inspect.Parameter:  # fmt: skip
    """One keyword parameter of a Typer command made from dataclass field `f` of `cls`.
    `default` (else the field's) is what the command sees when the option is not given."""
    from charlstm.cli.io import choices

    meta = f.metadata
    hint = typing.get_type_hints(cls)[f.name]
    kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    if meta.get("choices"):
        kind = choices(f.name.title(), meta["choices"])
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    default = f.default if default is ... else default
    option = typer.Option(
        *decls,
        help=meta["help"] + help_suffix,  # (a backslash keeps Rich from reading [..] as markup)
        metavar=meta.get("metavar"),
        rich_help_panel=panel,
        show_default=default is not None and kind is not bool,
    )
    annotation = Annotated[kind | None, option] if default is None else Annotated[kind, option]
    return inspect.Parameter(
        name or f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def with_options(**groups: tuple[type, str]) -> Callable:
    """Decorate a command so that each `name=(Dataclass, panel)` adds one option per field of
    the dataclass (in the help panel `panel`) and the command receives `name` as one instance
    of it, built from the values given (a bad one is refused by the dataclass's own checks)."""

    def decorate(command: Callable) -> Callable:
        own = inspect.signature(command, eval_str=True).parameters.values()
        params = [p for p in own if p.name not in groups]
        for group, (cls, panel) in groups.items():
            params += [field_option(cls, f, name=f"{group}__{f.name}", panel=panel)
                       for f in option_fields(cls)]  # fmt: skip

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            from charlstm.cli.io import run

            for group, (cls, _) in groups.items():
                values = {f.name: kwargs.pop(f"{group}__{f.name}") for f in option_fields(cls)}
                values = {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}
                kwargs[group] = run(cls, **values)
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer must read the new signature, not the command's
        return wrapper

    return decorate


ThreadsOption = Annotated[
    int,
    typer.Option(
        metavar="N",
        help="CPU threads. 0 (auto): time the work at all cores and at 1 thread as it runs, "
        "keep the faster, and time again when it slows (another program took a core).",
    ),
]
