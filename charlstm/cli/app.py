"""The `charlstm` command line: parse, call the library, print. The only module that knows
Typer. Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage error (an unknown option, a
malformed or out-of-range value), 130 interrupted, 141 stdout closed by its reader (`| head`).
"""

from __future__ import annotations

import inspect
import os
import sys
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from charlstm import __version__
from charlstm.cli import ui
from charlstm.config import PRECISIONS, PRESETS, TrainConfig
from charlstm.errors import CharLSTMError
from charlstm.evaluation.continuous_cache import CacheSettings
from charlstm.evaluation.dynamic import DynamicSettings


def _click_class(name: str) -> type:
    """Click's exception class `name`, whether Typer uses click or its own vendored copy."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


class _Group(TyperGroup):
    """Typer group whose usage errors are one line on stderr (exit 2), like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rc = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:
                # `charlstm` (or `charlstm corpus`) alone: the help (Typer's Rich help has
                # already printed itself while the error was made; plain help is the message)
                if e.format_message().strip():
                    _emit(e.format_message() + "\n")
                rc = 0
                if standalone_mode:
                    sys.exit(rc)
                return rc
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            ui.error(f"{e.format_message()}{hint}")
            rc = 2
        except _ClickException as e:
            ui.error(e.format_message())
            rc = e.exit_code
        except (typer.Abort, KeyboardInterrupt):
            ui.error("interrupted")
            rc = 130
        except _StdoutClosed:
            # the reader went away (`charlstm sample ... | head`): stop quietly, as `cat` does
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            rc = 141
        except CharLSTMError as e:  # raised outside a command's _run (help on a bad stdout)
            ui.error(str(e))
            rc = e.exit_code
        except Exception as e:  # a bug, not a user error: one line unless --verbose
            if _verbose:
                raise
            ui.error(
                f"unexpected {type(e).__name__}: {e} (rerun with --verbose for the "
                "traceback, and please report it)"
            )
            rc = 1
        if standalone_mode:
            sys.exit(rc or 0)
        return rc


app = typer.Typer(
    cls=_Group,
    name="charlstm",
    help="Character-level language modeling with multi-layer LSTMs: tokenize, train, eval, sample.",
    epilog="Example:  charlstm train --time-budget 10  then  charlstm sample "
    "checkpoints/tinyshakespeare-small/best.pt --prime 'ROMEO:'",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)

_verbose = False


def _version(value: bool) -> None:
    if value:
        print(f"charlstm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks for unexpected errors.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors and data on the terminal.")
    ] = False,
) -> None:
    """charlstm: train a character-level LSTM language model on your own text."""
    global _verbose
    _verbose = verbose
    ui.set_quiet(quiet)


def _run(fn, *args, **kwargs):
    """Call the library; a CharLSTMError becomes one line on stderr and its exit code (1, or
    2 for a bad option value)."""
    try:
        return fn(*args, **kwargs)
    except CharLSTMError as e:
        ui.error(str(e))
        raise typer.Exit(e.exit_code) from None


def _choices(name: str, values) -> type[Enum]:
    """A str Enum of `values`: how Typer spells a fixed set of choices."""
    return Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


class _StdoutClosed(Exception):
    """Standard output's reader closed the pipe."""


def _emit(text: str) -> None:
    """Data to stdout (and flushed, so a pipe sees it at once). A full disk or a closed stdout
    is one line on stderr; a reader that went away ends the command quietly."""
    try:
        if sys.stdout is None:  # started with stdout closed (`>&-`)
            raise OSError(9, "it is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise _StdoutClosed from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise CharLSTMError(
            f"cannot write to standard output: {reason}",
            "redirect it to a file with room, or use --output where the command has it",
        ) from None


class Level(str, Enum):
    char = "char"
    byte = "byte"


class Normalize(str, Enum):
    none = "none"
    nfc = "nfc"
    nfkc = "nfkc"


@app.command(
    epilog="Examples:  charlstm tokenize  ·  charlstm tokenize my.txt --out data/my "
    "--level byte --val-frac 0.05 --test-frac 0.05",
)
def tokenize(
    corpus: Annotated[
        Path | None,
        typer.Argument(
            help="Text file, or folder of text files (sorted). Default: bundled tiny shakespeare."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder. Default: data/<corpus name>."),
    ] = None,
    level: Annotated[
        Level, typer.Option(help="char: Unicode characters; byte: the 256 UTF-8 byte values.")
    ] = Level.char,
    normalize: Annotated[
        Normalize, typer.Option(help="Unicode normalization before tokenizing.")
    ] = Normalize.none,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Lowercase the text.")] = False,
    val_frac: Annotated[
        float | None,
        typer.Option(
            help="Fraction of the text (from the end) for validation. Default: 0.1, "
            "or the standard split of a corpus from `charlstm corpus get`."
        ),
    ] = None,
    test_frac: Annotated[
        float | None,
        typer.Option(
            help="Fraction of the text (the very end) held out for testing. "
            "Default: 0, or the corpus's standard split."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing output folder of an earlier tokenize."),
    ] = False,
) -> None:
    """Tokenize a corpus into train/val/test id arrays, tokenizer.json and meta.json."""
    from charlstm.data.prepare import tokenize as tokenize_corpus

    result = _run(
        tokenize_corpus,
        corpus,
        out,
        level=level.value,
        normalize=normalize.value,
        lowercase=lowercase,
        val_frac=val_frac,
        test_frac=test_frac,
        force=force,
    )
    ui.show_tokenize(result)


DeviceOption = Annotated[
    str,
    typer.Option(help="Where to run: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
]


def _config_option(f) -> inspect.Parameter:
    """A `train` option made from a TrainConfig field: its flag, help text and type. Every
    option defaults to None ("not given"), so the preset's value (or, on --resume, the run's)
    stands unless the user sets it."""
    meta, hints = f.metadata, typing.get_type_hints(TrainConfig)
    kind = next(
        t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)
    )
    if meta.get("choices"):
        kind = _choices(f.name.title(), meta["choices"])
    name = meta.get("flag") or "--" + f.name.replace("_", "-")
    decls = [f"{name}/--no-{name[2:]}"] if kind is bool else [name]
    help_text = meta["help"]  # (a backslash keeps Rich from reading [..] as markup)
    if f.name in PRESETS["small"]:
        help_text += " \\[default: the preset's]"
    elif f.default is not None and kind is not bool and not meta.get("choices"):
        help_text += f" \\[default: {f.default}]"
    option = typer.Option(
        *decls,
        help=help_text,
        metavar=meta.get("metavar"),
        rich_help_panel=(
            "How long, how often, where (may change on --resume)"
            if meta.get("resumable")
            else "Model and training (fixed for a run)"
        ),
    )
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, option],
    )


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
    result = _run(
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
    epilog="Examples:  charlstm train --time-budget 10  ·  charlstm train data/my --preset tiny "
    "--steps 500 --out checkpoints/my  ·  charlstm train --out checkpoints/my --resume",
)(_train_command())


class Split(str, Enum):
    val = "val"
    test = "test"
    train = "train"


EvalPrecision = Enum("EvalPrecision", {p: p for p in PRECISIONS}, type=str)  # train's choices


class Unknown(str, Enum):
    error = "error"
    skip = "skip"


_DYNAMIC = DynamicSettings()  # the defaults the --dynamic-* options show
_CACHE = CacheSettings()  # ... and the --cache-* options

CheckpointArg = Annotated[
    Path, typer.Argument(help="A checkpoint written by `charlstm train` (best.pt or last.pt).")
]


@app.command(
    name="eval",
    epilog="Examples:  charlstm eval checkpoints/tinyshakespeare-small/best.pt  ·  charlstm eval "
    "run/best.pt --text notes.txt --unknown skip --json",
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
    dynamic_segment: Annotated[
        int, typer.Option(help="--dynamic: characters scored between two weight updates.")
    ] = _DYNAMIC.segment,
    dynamic_lr: Annotated[
        float, typer.Option(help="--dynamic: step size, in RMS-normalised units.")
    ] = _DYNAMIC.lr,
    dynamic_decay: Annotated[
        float, typer.Option(help="--dynamic: pull back toward the trained weights per update.")
    ] = _DYNAMIC.decay,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache",
            help="Mix in a continuous cache of recent hidden states (Grave et al. 2017). "
            "Reported as mode 'cache'.",
        ),
    ] = False,
    cache_window: Annotated[
        int, typer.Option(help="--cache: how many earlier positions it holds.")
    ] = _CACHE.window,
    cache_theta: Annotated[
        float, typer.Option(help="--cache: sharpness of the hidden-state match.")
    ] = _CACHE.theta,
    cache_lambda: Annotated[
        float, typer.Option(help="--cache: weight of the cache in the mixture.")
    ] = _CACHE.lam,
    precision: Annotated[
        EvalPrecision,
        typer.Option(
            help="auto: fp32 on a CPU (the exact number), bf16 autocast on a GPU. bf16 on a CPU: "
            "training's bf16 LSTM kernel, faster with bf16 units, off by bf16 rounding."
        ),
    ] = EvalPrecision.auto,
    device: DeviceOption = "auto",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """Exact perplexity and bits per character of a checkpoint on held-out text."""
    import json

    from charlstm.evaluation.scoring import evaluate

    settings = DynamicSettings(segment=dynamic_segment, lr=dynamic_lr, decay=dynamic_decay)
    _run(settings.validate)  # a bad value is refused even without --dynamic
    cache_settings = CacheSettings(window=cache_window, theta=cache_theta, lam=cache_lambda)
    _run(cache_settings.validate)
    result = _run(
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
        dynamic=settings if dynamic else None,
        cache=cache_settings if cache else None,
        precision=precision.value,
    )
    if result.streams < result.streams_asked:
        ui.warn(
            f"scored {result.streams} streams, not {result.streams_asked}: each stream needs at "
            f"least 1,000 characters (its first ones are predicted from a fresh state)"
        )
    if json_out:
        _emit(json.dumps(result.to_dict()) + "\n")
    else:
        ui.show_eval(result)


class SampleDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command(
    epilog="Examples:  charlstm sample checkpoints/tinyshakespeare-small/best.pt --prime "
    "'ROMEO:' --length 300 --temperature 0.8 --seed 1  ·  charlstm sample run/best.pt "
    "--num-samples 4 --top-p 0.9 --json  ·  charlstm sample run/best.pt --output samples.txt",
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
) -> None:
    """Generate text from a checkpoint; the text (prime first) is all that goes to stdout."""
    import json

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
        prime = _run(read_prime_file, prime_file)
    if output is not None:
        _run(check_output, output, force)  # before spending time on generating
    stream = num_samples == 1 and output is None and not json_out
    texts = _run(
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
        on_text=(lambda _sample, piece: _emit(piece)) if stream else None,
        adapt=adapt,
    )
    if stream:
        _emit("\n")
    elif output is not None:
        _run(save_samples, texts, output, as_json=json_out, force=force)
        ui.info(f"wrote {len(texts)} sample(s) to {output}")
    elif json_out:
        _emit(json.dumps(texts, ensure_ascii=False) + "\n")
    else:
        _emit(format_samples(texts))


@app.command(
    epilog="Examples:  charlstm report checkpoints/tinyshakespeare-small  ·  charlstm report "
    "run --png curves.png",
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

    curves = _run(read_curves, run_dir)
    if json_out:
        _emit(json.dumps(curves.summary(), indent=2) + "\n")
    else:
        ui.show_report(curves)
    if png is not None:
        _run(write_png, curves, png, str(run_dir))
        ui.info(f"wrote {png}")


@app.command(
    epilog="Examples:  charlstm info checkpoints/tinyshakespeare-small/best.pt  ·  "
    "charlstm info run/last.pt --json | jq .best_val",
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

    facts = _run(describe, checkpoint)
    if json_out:
        _emit(json.dumps(facts, indent=2) + "\n")
    else:
        ui.show_info(facts)


@app.command(
    epilog="Examples:  charlstm bench  ·  charlstm bench --quick --json > bench.json  ·  "
    "charlstm bench --section sample --section train --preset small",
)
def bench(
    preset: Annotated[
        list[_choices("Preset", PRESETS)] | None,  # type: ignore[valid-type]
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
        Path | None, typer.Option(help="Scratch folder. Default: <tmp>/charlstm-bench.")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A trained small-preset checkpoint for the eval/sample sections."),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Shorter timings, fewer presets.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Measure charlstm against this machine's own limits (matmul, memory bandwidth)."""
    import json

    from charlstm.benchmark.suite import run_bench

    report = _run(
        run_bench,
        presets=[p.value for p in preset] if preset else None,
        corpus_mb=corpus_mb,
        workdir=workdir,
        quick=quick,
        sections=set(section) if section else None,
        checkpoint=checkpoint,
        progress=ui.info,
    )
    ui.show_bench(report)
    if json_out:
        _emit(json.dumps(report.to_dict(), indent=2) + "\n")


corpus_app = typer.Typer(
    help="The standard corpora: list them, download one.", no_args_is_help=True
)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command(name="list", epilog="Example:  charlstm corpus list")
def corpus_list() -> None:
    """The corpora `charlstm corpus get` knows: size, split, source, licence."""
    from charlstm.data.catalog import CATALOG

    ui.show_catalog(CATALOG.values())


@corpus_app.command(
    name="get",
    epilog="Examples:  charlstm corpus get enwik8  ·  charlstm corpus get text8 --dir corpora/ "
    "&& charlstm tokenize corpora/text8 --level byte",
)
def corpus_get(
    name: Annotated[str, typer.Argument(help="tinyshakespeare, enwik8 or text8.")],
    dir: Annotated[Path, typer.Option("--dir", help="Folder to put it in.")] = Path("corpora"),
    url: Annotated[str | None, typer.Option(help="Download from this mirror instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again if present.")] = False,
) -> None:
    """Download a standard corpus, verify it, unpack it and record its standard split."""
    from charlstm.data.catalog import fetch

    with ui.download_progress(name) as advance:
        path = _run(fetch, name, dir, url=url, force=force, progress=advance)
    ui.info(f"{path} ready; next: charlstm tokenize {path}")


class InspectView(str, Enum):
    surprisal = "surprisal"
    neurons = "neurons"
    compare = "compare"


@app.command(
    name="inspect",
    epilog="Examples:  charlstm inspect checkpoints/tinyshakespeare-small/best.pt  ·  charlstm "
    "inspect run/best.pt notes.txt --html notes.html  ·  charlstm inspect run/best.pt --prime "
    "'ROMEO: (aside) \"Hark!\"' --view neurons --neuron 1:42  ·  charlstm inspect "
    "run/best.pt --against run/early.pt --view compare",
)
def inspect_(
    checkpoint: CheckpointArg,
    text: Annotated[
        str | None,
        typer.Argument(
            help="Text file to inspect, or - for stdin. Default: the start of the run's val split.",
            show_default=False,
        ),
    ] = None,
    prime: Annotated[
        str | None, typer.Option(help="Inspect this text, given on the command line.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="The most characters to inspect: a longer TEXT is refused (default 10,000); "
            "without TEXT, how many of the val split to show (default 3,000).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Tokenized folder for the default text (default: the run's)."),
    ] = None,
    split: Annotated[Split, typer.Option(help="Split the default text comes from.")] = Split.val,
    unknown: Annotated[
        Unknown, typer.Option(help="Characters outside the vocabulary: error, or skip them.")
    ] = Unknown.error,
    against: Annotated[
        Path | None,
        typer.Option(help="A second checkpoint (same vocabulary): colour the loss difference."),
    ] = None,
    neuron: Annotated[
        list[str] | None,
        typer.Option(
            help="Show this cell: LAYER:UNIT (0-based; both its c and h) or LAYER:UNIT:c / :h. "
            "Repeat for more.",
            metavar="LAYER:UNIT",
            show_default=False,
        ),
    ] = None,
    view: Annotated[
        list[InspectView] | None,
        typer.Option(
            help="Views for the terminal (repeatable). Default: surprisal, or the comparison "
            "with --against and the neurons with --neuron; none with --html or --json.",
            show_default=False,
        ),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(help="Write every view as one self-contained web page to this file."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --html file.")] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the numbers (per-character bits, top guesses, "
            "cell ranking) as one JSON object on stdout.",
        ),
    ] = False,
    pager: Annotated[
        bool, typer.Option("--pager/--no-pager", help="Page long output on a terminal.")
    ] = True,
    device: DeviceOption = "auto",
) -> None:
    """See what the model learned: each character's surprisal with the model's top guesses,
    cells that track quotes, brackets, line position and more, and a comparison of two
    checkpoints, in the terminal or as a web page."""
    import json

    from charlstm.inspection.analysis import inspect_text, to_dict
    from charlstm.inspection.html import check_html_path, write_html

    if text is not None and prime is not None:
        ui.error("give a TEXT file or --prime, not both")
        raise typer.Exit(2)
    if view and InspectView.compare in view and against is None:
        ui.error("--view compare needs --against OTHER.pt")
        raise typer.Exit(2)
    if html is not None:
        _run(check_html_path, html, force)  # before any work: nothing is computed in vain
    given, file, source = prime, None, "--prime" if prime is not None else None
    if text == "-":
        given, source = _run(_read_stdin), "stdin"
    elif text is not None:
        file = Path(text)
    result = _run(
        inspect_text,
        checkpoint,
        given,
        file=file,
        source=source,
        data=data,
        split=split.value,
        limit=limit,
        unknown=unknown.value,
        against=against,
        neurons=neuron or (),
        device=device,
    )
    if html is not None:
        size = _run(write_html, result, html, force)
        ui.info(f"wrote {html} ({size / 1e6:.2f} MB): open it in a browser")
    if json_out:
        _emit(json.dumps(to_dict(result)) + "\n")
    views = [v.value for v in view] if view else []
    if not view and html is None and not json_out:
        views = ["compare"] if against is not None else []
        views += ["neurons"] if neuron else []
        views = views or ["surprisal"]
    if views:
        ui.show_inspection(result, views, page=pager)
    elif not json_out:
        ui.show_inspect_summary(result)


def _read_stdin() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CharLSTMError(f"stdin is not valid UTF-8 (byte offset {e.start})") from None


class ExportFormat(str, Enum):
    onnx = "onnx"
    web = "web"


@app.command(
    name="export",
    epilog="Examples:  charlstm export checkpoints/ts10/best.pt --format web --out ts10-web  "
    "(then open ts10-web/index.html)  ·  charlstm export run/best.pt --format onnx --out "
    "run-onnx  (then python examples/onnx_sample.py run-onnx --prime 'ROMEO:')",
)
def export_(
    checkpoint: CheckpointArg,
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="onnx: prime and one-step graphs for onnxruntime (needs the export extra); "
            "web: a static page that samples in the browser, offline.",
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
    """Export a checkpoint: ONNX graphs for any ONNX runtime, or a page that runs offline."""
    import json

    from charlstm.export import formats as exporting

    if format == ExportFormat.onnx:
        if verify and not exporting.onnxruntime_available():
            ui.warn("onnxruntime is not installed: the export is not verified against PyTorch "
                    "(pip install 'charlstm[export]')")  # fmt: skip
        result = _run(exporting.export_onnx, checkpoint, out, force=force, verify=verify)
    else:
        result = _run(exporting.export_web, checkpoint, out, force=force)
    ui.show_export(result)
    if json_out:
        _emit(json.dumps(result.to_dict(), indent=2) + "\n")


@app.command(
    epilog="Examples:  charlstm serve checkpoints/tinyshakespeare-small/best.pt  (then open "
    "http://127.0.0.1:8000/)  ·  charlstm serve run/best.pt --port 0 --api-key s3cret  ·  "
    "curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' -d "
    '\'{"model": "RUN", "prompt": "ROMEO:", "max_tokens": 200}\'',
)
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
    max_streams: Annotated[
        int, typer.Option(help="Concurrent streams (all requests; more get a 429).")
    ] = 64,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask.")] = 4096,
    max_n: Annotated[int, typer.Option(help="Most choices per request (n x prompts).")] = 8,
    max_prompt_chars: Annotated[int, typer.Option(help="Longest prompt, in characters.")] = 8192,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body (a bigger one gets a 413).")
    ] = 256 * 1024,
    dtype: Annotated[
        SampleDtype, typer.Option(help="Weight precision for generation (bf16 reads half).")
    ] = SampleDtype.fp32,
    threads: Annotated[
        int, typer.Option(help="CPU threads for the model (0: PyTorch's default).")
    ] = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Serve a checkpoint over HTTP with OpenAI's completions API (the openai client and curl
    work unchanged) and a playground page; concurrent requests share one batch."""
    from charlstm.serving.server import ServeLimits, serve_available
    from charlstm.serving.server import serve as serve_checkpoint

    if not serve_available():
        ui.error("charlstm serve needs FastAPI and uvicorn: pip install 'charlstm[serve]'")
        raise typer.Exit(1)
    limits = ServeLimits(max_prompt_chars=max_prompt_chars, max_tokens=max_tokens, max_n=max_n,
                         max_body_bytes=max_body_bytes, max_streams=max_streams)  # fmt: skip
    _run(serve_checkpoint, checkpoint, host=host, port=port, api_key=api_key, limits=limits,
         device=device, dtype=dtype.value, threads=threads, on_ready=ui.show_serving)  # fmt: skip
    ui.info("stopped")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="charlstm")
