"""Everything a human sees: one Rich console on stderr, tables, progress. The only module that
knows Rich; the library reports through plain objects and this module renders them."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True, highlight=False)
# errors and warnings always get through, even when `--quiet` silences everything else
_alerts = Console(stderr=True, highlight=False)


def set_quiet(quiet: bool) -> None:
    console.quiet = quiet


def interactive() -> bool:
    """Whether live progress bars make sense (a terminal, not a log file or a pipe)."""
    return console.is_terminal and not console.is_dumb_terminal


def error(message: str) -> None:
    """One line on stderr, never wrapped, never a traceback."""
    _alerts.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)


def warn(message: str) -> None:
    _alerts.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    console.print(_escape(message), soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(" ".join(str(text).split()))


def fmt_int(n: int | float) -> str:
    return f"{int(n):,}"


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def key_value_table(title: str, rows: Mapping[str, object]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def show_tokenize(result) -> None:
    """Summary of a finished `tokenize`."""
    chars = result.chars
    rows = {
        "output": str(result.out),
        "level": result.vocab.level
        + (f", {result.vocab.normalize}" if result.vocab.normalize != "none" else "")
        + (", lowercase" if result.vocab.lowercase else ""),
        "characters": fmt_int(chars["total"]),
        "vocabulary": fmt_int(result.vocab.size) + f" symbols ({result.vocab.dtype.name})",
        "train / val / test": " / ".join(fmt_int(chars[s]) for s in ("train", "val", "test")),
        "time": f"{result.elapsed_s:.2f} s",
        "speed": f"{result.mb_per_s:,.1f} MB/s",
    }
    console.print(key_value_table("tokenized", rows))


def show_table(title: str, rows: Mapping[str, object]) -> None:
    console.print(key_value_table(title, rows))


def fmt_loss(loss: float | None) -> str:
    return "-" if loss is None or not math.isfinite(loss) else f"{loss:.4f}"


class TrainProgress:
    """Renders the trainer's reports: a live bar on a terminal, plain periodic lines elsewhere.

    Implements the reporter protocol of `charlstm.trainer` (start / step / evaluated / saved /
    message / close).
    """

    def __init__(self, quiet: bool = False, line_every_s: float = 10.0) -> None:
        self.quiet = quiet
        self.live = interactive() and not quiet and not os.environ.get("CHARLSTM_PLAIN")
        self.line_every_s = line_every_s
        self._last_line = 0.0
        self._progress: Progress | None = None
        self._task = None
        self._fields: dict[str, str] = {}
        self.unit = "steps"

    # -- reporter protocol ---------------------------------------------------------------
    def start(self, total: float, unit: str, header: Mapping[str, object]) -> None:
        self.unit = unit
        if not self.quiet:
            show_table("training", header)
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if unit == "steps" else TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, stats="")

    def step(self, done: float, stats: Mapping[str, object]) -> None:
        self._fields.update({k: str(v) for k, v in stats.items()})
        text = "  ".join(f"{k} {v}" for k, v in self._fields.items())
        if self._progress is not None:
            self._progress.update(self._task, completed=done, stats=text)
        elif not self.quiet and time.monotonic() - self._last_line >= self.line_every_s:
            self._last_line = time.monotonic()
            console.print(f"{self.unit} {done:g}  {text}", soft_wrap=True, markup=False)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(_escape(text), soft_wrap=True)
        else:
            console.print(_escape(text), soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def show_train(result) -> None:
    """Summary table at the end of `train`."""
    rows = {
        "status": "interrupted (resume with --resume)" if result.interrupted else "done",
        "best val loss": f"{fmt_loss(result.best_val_loss)} nats/char",
        "best val bpc": fmt_loss(result.best_val_bpc),
        "best val perplexity": fmt_loss(result.best_val_perplexity),
        "steps": fmt_int(result.steps),
        "characters seen": fmt_int(result.chars_seen),
        "parameters": fmt_int(result.params),
        "time": fmt_duration(result.elapsed_s),
        "speed": f"{result.chars_per_s:,.0f} chars/s",
    }
    if result.skipped_steps:
        rows["skipped steps"] = f"{result.skipped_steps} (non-finite loss or gradient)"
    rows.update({name: str(path) for name, path in result.files.items()})
    show_table("training summary", rows)


def show_eval(result) -> None:
    """Table of an evaluation's scores."""
    rows = {
        "source": result.source + (f" ({result.split})" if result.split else ""),
        "loss": f"{result.loss:.4f} nats/char",
        "bits per char": f"{result.bpc:.4f}",
        "perplexity": f"{result.perplexity:.4f}",
        "characters scored": fmt_int(result.chars),
        "time": f"{result.seconds:.2f} s",
        "speed": f"{result.chars_per_s:,.0f} chars/s",
    }
    if result.skipped:
        rows["skipped"] = f"{fmt_int(result.skipped)} unknown characters"
    show_table("evaluation", rows)


def show_report(curves) -> None:
    """The learning-curve chart and the run's summary numbers."""
    from rich.text import Text

    from charlstm.report import text_chart

    colours = {".": "cyan", "o": "yellow", "*": "bold red"}
    for line in text_chart(curves, width=max(30, min(100, console.width - 12))):
        text = Text()
        for ch in line:
            text.append(ch, style=colours.get(ch) if line[:1] == " " or "|" in line else None)
        console.print(text, soft_wrap=True)
    s = curves.summary()
    show_table(
        "run",
        {
            "best val loss": f"{fmt_loss(s['best_val_loss'])} nats/char"
            + (
                f" at {fmt_int(s['best_at_chars'])} chars" if s["best_at_chars"] is not None else ""
            ),
            "best val bpc": fmt_loss(s["best_val_bpc"]),
            "best val perplexity": fmt_loss(s["best_val_perplexity"]),
            "last train loss": fmt_loss(s["last_train_loss"]),
            "steps": fmt_int(s["steps"]),
            "characters seen": fmt_int(s["chars_seen"]),
            "time": fmt_duration(s["elapsed_s"]),
            "speed": f"{s['chars_per_s']:,.0f} chars/s",
        },
    )


def show_catalog(specs) -> None:
    """The corpora `charlstm corpus get` knows, one block per corpus (readable at any width)."""
    for s in specs:
        show_table(
            s.name,
            {
                "size": f"{s.size_bytes:,} bytes",
                "split": f"val {s.val_frac:g}, test {s.test_frac:g} (from the end)",
                "what": s.description,
                "licence": s.licence,
                "source": s.url,
                "checksum": "sha256 pinned" if s.download_sha256 else "size checked",
            },
        )


@contextmanager
def download_progress(name: str):
    """A Rich download bar (bytes, speed); yields the callback `fetch` reports to."""
    from rich.progress import DownloadColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive(),
    )
    task = progress.add_task("download", total=None)

    def advance(done: int, total: int | None) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield advance


def show_info(facts: Mapping) -> None:
    """A checkpoint's description (see `charlstm.checkpoint.describe`)."""
    m, v, best = facts["model"], facts["vocab"], facts["best_val"]
    data = facts.get("data") or {}
    rows = {
        "checkpoint": f"{facts['path']} (format {facts['format_version']})",
        "model": f"{m['num_layers']} x LSTM({m['hidden_size']}), embed {m['embed_size']}, "
        f"dropout {m['dropout']}" + (", tied" if m.get("tie_weights") else ""),
        "parameters": fmt_int(facts["parameters"]),
        "vocabulary": f"{v['size']} symbols, {v['level']} level"
        + (f", {v['normalize']}" if v["normalize"] != "none" else "")
        + (", lowercase" if v["lowercase"] else ""),
        "symbols": repr(v["preview"]),
        "trained": f"{fmt_int(facts['steps'] or 0)} steps, "
        f"{fmt_int(facts['chars_seen'] or 0)} characters, "
        f"{fmt_duration(facts['elapsed_s'] or 0)}",
        "best val": "-"
        if best is None
        else f"loss {best['loss']:.4f}  bpc {best['bpc']:.4f}  ppl {best['perplexity']:.3f}",
        "data": f"{data.get('name')} ({data.get('folder')}, sha256 "
        f"{str(data.get('sha256'))[:12]}...)"
        if data
        else "-",
        "settings": ", ".join(f"{k} {val}" for k, val in facts["train"].items()),
    }
    show_table("checkpoint", rows)


def show_bench(report) -> None:
    """The benchmark's rows as one table, ratios against the machine's own limits."""
    table = Table(title="charlstm bench", title_justify="left")
    for col in ("section", "measurement", "value", "ratio", "", "compared with"):
        table.add_column(col, justify="right" if col in ("value", "ratio") else "left")
    for r in report.rows:
        mark = {True: "[green]ok[/]", False: "[red]below target[/]", None: ""}[r.ok]
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        table.add_row(r.section, r.name, f"{r.value:,.1f} {r.unit}", ratio, mark, r.note)
    console.print(table)


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def show_export(result) -> None:
    """What `charlstm export` wrote, how it was checked, and how to use it."""
    rows = {"output": str(result.out), "format": result.format}
    for name, size in result.files.items():
        rows[name] = fmt_bytes(size)
    rows["total"] = fmt_bytes(result.total_bytes)
    check = result.check
    if check is not None:
        rows["checked"] = (
            f"onnxruntime vs PyTorch: max |logit diff| {check.max_abs_diff:.2g} over a "
            f"{check.prime_len}-token prime + {check.steps:,} steps x {check.batch_size} streams"
            f" (largest logit {check.max_abs_logit:.3g}); greedy choices "
            + ("agree" if check.greedy_agree else "differ at a near-tie")
        )
    if result.format == "web":
        page = (result.out / "index.html").resolve().as_uri()
        rows["open"] = f"{page}  (works from disk; no server needed)"
    else:
        rows["next"] = f"python examples/onnx_sample.py {result.out} --prime 'Hello'"
    show_table(f"exported ({result.format})", rows)


def show_paths(title: str, paths: Mapping[str, Path]) -> None:
    show_table(title, {k: str(v) for k, v in paths.items()})


def flush() -> None:
    sys.stderr.flush()
