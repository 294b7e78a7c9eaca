"""The `charlstm` command line: parse, validate, call the library, print. The only module that
knows Typer. Exit codes: 0 ok, 1 user error (one line on stderr), 2 usage, 130 interrupted."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from charlstm import __version__, ui
from charlstm.errors import CharLSTMError


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
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            ui.error(f"{e.format_message()}{hint}")
            rc = 2
        except _ClickException as e:
            ui.error(e.format_message())
            rc = e.exit_code
        except (typer.Abort, KeyboardInterrupt):
            ui.error("interrupted")
            rc = 130
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
    """Call the library; a CharLSTMError becomes one line on stderr and exit 1."""
    try:
        return fn(*args, **kwargs)
    except CharLSTMError as e:
        ui.error(str(e))
        raise typer.Exit(1) from None


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
        bool, typer.Option("--force", help="Replace an existing output folder.")
    ] = False,
) -> None:
    """Tokenize a corpus into train/val/test id arrays, tokenizer.json and meta.json."""
    from charlstm.catalog import recorded_split
    from charlstm.prepare import tokenize as tokenize_corpus

    standard = recorded_split(corpus) or (0.1, 0.0)
    val_frac = standard[0] if val_frac is None else val_frac
    test_frac = standard[1] if test_frac is None else test_frac
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


class Preset(str, Enum):
    tiny = "tiny"
    small = "small"
    medium = "medium"
    large = "large"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


DeviceOption = Annotated[
    Device, typer.Option(help="Where to run: auto picks cuda, then mps, then cpu.")
]


@app.command(
    epilog="Examples:  charlstm train --time-budget 10  ·  charlstm train data/my --preset tiny "
    "--steps 500 --out checkpoints/my  ·  charlstm train --resume",
)
def train(
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Tokenized folder, or raw text file/folder (tokenized into a "
            "cache). Default: bundled tiny shakespeare."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder. Default: checkpoints/<data>-<preset>."),
    ] = None,
    preset: Annotated[
        Preset | None,
        typer.Option(help="Model/optimizer preset; default small on CPU, medium on CUDA."),
    ] = None,
    layers: Annotated[int | None, typer.Option(help="LSTM layers.")] = None,
    hidden: Annotated[int | None, typer.Option(help="LSTM hidden size.")] = None,
    embed: Annotated[int | None, typer.Option(help="Embedding size.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout probability in [0, 1).")] = None,
    tie_weights: Annotated[
        bool | None,
        typer.Option(
            "--tie-weights/--no-tie-weights",
            help="Share embedding and output weights (needs --embed = --hidden).",
        ),
    ] = None,
    bptt: Annotated[int | None, typer.Option(help="Truncated-BPTT window (characters).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Parallel streams (global, over all processes).")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    clip: Annotated[float | None, typer.Option(help="Gradient-norm clip (0: off).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Linear warm-up steps.")] = None,
    min_lr_ratio: Annotated[
        float | None, typer.Option(help="Cosine decays to lr x this at the end.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Train for this many steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Train for this many epochs.")] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Train for this many minutes (wall clock).")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Validate on the whole val split every N steps.")
    ] = None,
    eval_batch_size: Annotated[
        int | None, typer.Option(help="Streams used for validation during training.")
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help="Log a metrics line every N steps (default 10).")
    ] = None,
    save_every: Annotated[
        str | None,
        typer.Option(help="Also save last.pt every N steps, or every Nm minutes (e.g. 5m)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: DeviceOption = Device.auto,
    precision: Annotated[
        Precision, typer.Option(help="auto: bf16 autocast on CUDA, fp32 elsewhere.")
    ] = Precision.auto,
    compile: Annotated[bool, typer.Option("--compile", help="Use torch.compile.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start the run in --out over.")] = False,
    allow_data_change: Annotated[
        bool, typer.Option("--allow-data-change", help="Resume on data that differs.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a multi-layer LSTM with truncated BPTT; writes last.pt, best.pt, metrics.jsonl."""
    from charlstm.trainer import train as train_model

    progress = ui.TrainProgress(quiet=quiet)
    result = _run(
        train_model,
        data,
        out,
        preset=preset.value if preset else None,
        resume=resume,
        force=force,
        allow_data_change=allow_data_change,
        reporter=progress,
        num_layers=layers,
        hidden_size=hidden,
        embed_size=embed,
        dropout=dropout,
        tie_weights=tie_weights,
        bptt=bptt,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        clip=clip,
        warmup_steps=warmup,
        min_lr_ratio=min_lr_ratio,
        steps=steps,
        epochs=epochs,
        time_budget_min=time_budget,
        eval_every=eval_every,
        eval_batch_size=eval_batch_size,
        save_every=save_every,
        log_every=log_every,
        seed=seed,
        device=device.value,
        precision=precision.value if precision != Precision.auto else None,
        compile=compile or None,
    )
    from charlstm.distributed import from_environment

    main_rank = from_environment().is_main  # under torchrun, rank 0 speaks for all
    if not quiet and main_rank:
        ui.show_train(result)
    if result.interrupted:
        if quiet and main_rank:
            ui.warn(f"interrupted: {result.run_dir / 'last.pt'} saved; continue with --resume")
        raise typer.Exit(130)


class Split(str, Enum):
    val = "val"
    test = "test"
    train = "train"


class Unknown(str, Enum):
    error = "error"
    skip = "skip"


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
        Path | None, typer.Option(help="Tokenized folder. Default: the run's own data.")
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
    device: DeviceOption = Device.auto,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
) -> None:
    """Exact perplexity and bits per character of a checkpoint on held-out text."""
    import json

    from charlstm.evaluation import evaluate

    result = _run(
        evaluate,
        checkpoint,
        data=data,
        split=split.value if split else None,
        text=text,
        batch_size=batch_size,
        device=device.value,
        unknown=unknown.value,
    )
    if json_out:
        fields = ("loss", "bpc", "perplexity", "chars", "seconds", "skipped", "split", "source")
        print(json.dumps({k: getattr(result, k) for k in fields}))
    else:
        ui.show_eval(result)


class SampleDtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command(
    epilog="Examples:  charlstm sample checkpoints/tinyshakespeare-small/best.pt --prime "
    "'ROMEO:' --length 300 --temperature 0.8 --seed 1  ·  charlstm sample run/best.pt "
    "--num-samples 4 --top-p 0.9 --output samples.txt",
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
        int, typer.Option(help="Samples generated in one batch, separated by a blank line.")
    ] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    dtype: Annotated[
        SampleDtype, typer.Option(help="Weight precision for generation (bf16 reads half).")
    ] = SampleDtype.fp32,
    device: DeviceOption = Device.auto,
) -> None:
    """Generate text from a checkpoint; the text (prime first) is all that goes to stdout."""
    from charlstm.sampling import generate, read_prime_file

    if prime is not None and prime_file is not None:
        ui.error("give --prime or --prime-file, not both")
        raise typer.Exit(1)
    if prime_file is not None:
        prime = _run(read_prime_file, prime_file)
    if output is not None and output.is_dir():
        ui.error(f"--output {output} is a folder; pass a file path")
        raise typer.Exit(1)
    stream = num_samples == 1 and output is None

    def on_text(_sample: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

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
        device=device.value,
        dtype=dtype.value,
        on_text=on_text if stream else None,
    )
    if stream:
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    joined = "\n\n".join(texts) + "\n"
    if output is None:
        sys.stdout.write(joined)
        return
    try:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(joined, encoding="utf-8")
        tmp.replace(output)
    except OSError as e:
        ui.error(f"cannot write {output}: {e.strerror}")
        raise typer.Exit(1) from None
    ui.info(f"wrote {len(texts)} sample(s) to {output}")


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

    from charlstm.report import read_curves, write_png

    curves = _run(read_curves, run_dir)
    if json_out:
        print(json.dumps(curves.summary(), indent=2))
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

    from charlstm.checkpoint import describe

    facts = _run(describe, checkpoint)
    if json_out:
        print(json.dumps(facts, indent=2))
    else:
        ui.show_info(facts)


@app.command(
    epilog="Examples:  charlstm bench  ·  charlstm bench --quick --json > bench.json  ·  "
    "charlstm bench --section sample --section train --preset small",
)
def bench(
    preset: Annotated[
        list[Preset] | None, typer.Option(help="Presets whose training speed to measure.")
    ] = None,
    section: Annotated[
        list[str] | None,
        typer.Option(help="Only these: limits, tokenize, train, eval, sample, memory."),
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

    from charlstm.bench import run_bench

    known = {"limits", "tokenize", "train", "eval", "sample", "memory"}
    if section and not set(section) <= known:
        ui.error(
            f"unknown --section {', '.join(sorted(set(section) - known))}; use "
            f"{', '.join(sorted(known))}"
        )
        raise typer.Exit(1)
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
        print(json.dumps(report.to_dict(), indent=2))


corpus_app = typer.Typer(
    help="The standard corpora: list them, download one.", no_args_is_help=True
)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command(name="list", epilog="Example:  charlstm corpus list")
def corpus_list() -> None:
    """The corpora `charlstm corpus get` knows: size, split, source, licence."""
    from charlstm.catalog import CATALOG

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
    from charlstm.catalog import fetch

    with ui.download_progress(name) as advance:
        path = _run(fetch, name, dir, url=url, force=force, progress=advance)
    ui.info(f"{path} ready; next: charlstm tokenize {path}")


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

    from charlstm import export as exporting

    if format == ExportFormat.onnx:
        if verify and not exporting.onnxruntime_available():
            ui.warn("onnxruntime is not installed: the export is not verified against PyTorch "
                    "(pip install 'charlstm[export]')")  # fmt: skip
        result = _run(exporting.export_onnx, checkpoint, out, force=force, verify=verify)
    else:
        result = _run(exporting.export_web, checkpoint, out, force=force)
    ui.show_export(result)
    if json_out:
        print(json.dumps(result.to_dict(), indent=2))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="charlstm")
