"""Everything a human sees: one Rich console on stderr, tables, progress. The only module that
knows Rich; the library reports through plain objects and this module renders them."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import replace
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

# COLUMNS that is not a positive width (0, which some CI systems and containers set, or junk)
# would make Rich (and Typer's help) print nothing at all, errors included: it is dropped, and
# the width is the terminal's, or 80
_columns = os.environ.get("COLUMNS")
if _columns is not None and not (_columns.strip().isdigit() and int(_columns) >= 1):
    del os.environ["COLUMNS"]
# NO_COLOR (https://no-color.org) turns every escape code off: Rich alone would drop colours
# but keep bold and italic
_plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
console = Console(stderr=True, highlight=False, **_plain)
# errors and warnings always get through, even when `--quiet` silences everything else
_alerts = Console(stderr=True, highlight=False, **_plain)


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
    return _num(loss, 4)


class TrainProgress:
    """Renders the trainer's reports (`charlstm.training.progress.Reporter`): a live bar on a
    terminal, and elsewhere (a log file, a pipe, CI) a plain line every `line_every_s` seconds
    that reads like the bar: `step 120/500 (24%) ...` or `1.3/10.0 min ...`, ETA, losses, speed.
    The plain lines come from a heartbeat thread, so they keep their pace through slow steps
    and validations: the clock and the ETA move on from the last report, which it names."""

    def __init__(
        self, quiet: bool = False, line_every_s: float = 10.0, clock=time.monotonic
    ) -> None:
        self.quiet = quiet
        self.live = interactive() and not quiet and not os.environ.get("CHARLSTM_PLAIN")
        self.line_every_s = line_every_s
        self._clock = clock
        self._last_line = clock()
        self._progress: Progress | None = None
        self._task = None
        self._by_time = False
        self._info = None
        self._stats = None  # the last StepStats, and when it came
        self._stats_at = clock()
        self._begun = clock()
        self._step = 0  # the latest step any report named
        self._doing = "starting"  # what the run is doing since the last report
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, info) -> None:
        self._by_time = info.total_steps is None
        # the plain lines keep the pace they had (auto's measuring printed some already)
        self._info, self._stats_at = info, self._clock()
        self._step = info.resumed_at or 0
        if not self.quiet:
            show_table("training", run_header(info))
        if not self.live:
            self._start_heartbeat()
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn() if self._by_time else MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._progress.start()
        total = info.budget_min if self._by_time else info.total_steps
        self._task = self._progress.add_task("train", total=total, stats="")

    def step(self, stats) -> None:
        self._stats, self._stats_at, self._doing = stats, self._clock(), None
        self._step = max(self._step, stats.step)
        if self._progress is not None:
            done = stats.elapsed_s / 60 if self._by_time else stats.step
            self._progress.update(self._task, completed=done, stats=step_numbers(stats))
        else:
            self.heartbeat()

    def validating(self, step: int) -> None:
        self._doing = f"validating at step {step:,}"
        self._step = max(self._step, step)

    def heartbeat(self) -> None:
        """The plain line, if `line_every_s` have passed since the last one (off a terminal)."""
        if self.quiet or self._progress is not None:
            return
        with self._lock:  # the heartbeat thread and the trainer's reports both call this
            if self._clock() - self._last_line < self.line_every_s:
                return
            self._last_line = self._clock()
            console.print(self.heartbeat_line(), soft_wrap=True, markup=False)

    def heartbeat_line(self) -> str:
        """Where the run is now: the last report's numbers, its clock moved on to now."""
        since = self._clock() - self._stats_at
        stats = self._stats
        if self._info is None:
            return f"{fmt_duration(self._clock() - self._begun)}  preparing the run"
        if stats is None:
            info = self._info
            elapsed = info.elapsed_s + since
            if info.budget_min is not None:
                where = f"{elapsed / 60:.1f}/{info.budget_min:.1f} min  step {self._step:,}"
            else:
                where = f"step {self._step:,}/{info.total_steps:,}"
            return f"{where}  {fmt_duration(elapsed)}  {self._doing or 'training'}"
        eta = None if stats.eta_s is None else max(0.0, stats.eta_s - since)
        now = replace(stats, step=self._step, elapsed_s=stats.elapsed_s + since, eta_s=eta)
        line = plain_progress_line(now)
        return line + (f"  ({self._doing})" if self._doing else "")

    def _start_heartbeat(self) -> None:
        """Off a terminal, from the first thing the run says (`--preset auto`'s measuring comes
        before `start`)."""
        if self._thread is None and not self.live and not self.quiet:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="progress")
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.line_every_s)):
            self.heartbeat()

    def evaluated(self, stats) -> None:
        self._doing = None
        self._step = max(self._step, stats.step)
        loss = stats.val_loss
        self.message(
            f"step {stats.step:,}: val loss {loss:.4f}  bpc {loss / math.log(2):.4f}  "
            f"ppl {math.exp(min(loss, 700)):.3f}" + ("  (best)" if stats.improved else "")
        )

    def message(self, text: str) -> None:
        if self.quiet:
            return
        self._start_heartbeat()
        target = self._progress.console if self._progress is not None else console
        target.print(_escape(text), soft_wrap=True)

    def auto_chosen(self, choice) -> None:
        if not self.quiet:
            show_auto_choice(choice)
        shortfall = choice.shortfall()
        if shortfall is not None:  # through --quiet, as every warning
            warn(str(shortfall))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _millions(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} M"


def _threads_figures(choice) -> str:
    """', 1 thread (2: 3,659, 1: 5,398 chars/s)': what auto's thread timing found."""
    if not choice.thread_rates:
        return ""
    figures = ", ".join(f"{t}: {r:,.0f}" for t, r in choice.thread_rates.items())
    unit = "thread" if choice.threads == 1 else "threads"
    return f", {choice.threads} {unit} ({figures} chars/s)"


def auto_choice_table(choice) -> Table:
    """What `--preset auto` measured and chose (a `charlstm.training.autopreset.AutoChoice`)."""
    from charlstm.training.autopreset import MIN_CHARS_PER_PARAM

    table = Table(
        title=f"--preset auto: {choice.budget_min:g} min on {choice.device} "
        f"({choice.kernel} LSTM kernel{_threads_figures(choice)}), measured in "
        f"{choice.measure_s:.1f} s of it",
        title_justify="left",
        caption=f"fits: at least {MIN_CHARS_PER_PARAM:g} chars per parameter in the budget",
        caption_justify="left",
    )
    for name in ("shape", "params", "chars/s", "chars in budget", "chars/param", "epochs"):
        table.add_column(name, justify="left" if name == "shape" else "right")
    table.add_column("verdict")
    for i, row in enumerate(choice.rows):
        cpp, chars = row.chars_per_param, row.chars_in_budget
        style = "bold green" if i == choice.chosen else None
        table.add_row(
            row.name,
            _millions(row.params),
            "-" if row.chars_per_s is None else f"{row.chars_per_s:,.0f}",
            _millions(chars),
            "-" if cpp is None else f"{cpp:.2f}",
            "-" if chars is None else f"{chars / max(1, choice.train_chars):.1f}",
            row.verdict,
            style=style,
        )
    return table


def auto_choice_lines(choice) -> list[str]:
    """The chosen configuration, why, and what the user's own options decided."""
    from charlstm.config import flag

    cfg = choice.config
    band = "measured" if choice.regularisation_measured else "assumed, not measured"
    why = choice.reason
    if not all(flag(k) in choice.user_set for k in choice.regularisation):
        why += f" ({band} for this many epochs; see bench/RESULTS.md)"
    lines = [
        f"chosen: {cfg.num_layers} x LSTM({cfg.hidden_size}), embed {cfg.embed_size}, "
        f"dropout {cfg.dropout:g}, {cfg.batch_size} streams x bptt {cfg.bptt}, lr {cfg.lr:g}, "
        f"weight decay {cfg.weight_decay:g}",
        f"why: {why}",
    ]
    if choice.user_set:
        given = ", ".join(f"{k} {v}" for k, v in choice.user_set.items())
        lines.append(f"yours, kept over auto's: {given}")
    return lines


def show_auto_choice(choice) -> None:
    console.print(auto_choice_table(choice))
    for line in auto_choice_lines(choice):
        info(line)


def run_header(info) -> dict[str, str]:
    """The table printed when a run starts (a `charlstm.training.progress.RunInfo`)."""
    m = info.model
    batch = f"{info.batch_size} streams x bptt {info.bptt}, lr {info.lr:g}"
    if info.processes > 1:
        batch += f", {info.processes} processes"
    length = (
        f"{info.total_steps:,} steps"
        if info.total_steps is not None
        else f"{info.budget_min:g} min budget"
    )
    if info.resumed_at is not None:
        length += f" (resumed at step {info.resumed_at:,})"
    return {
        "data": f"{info.data} ({info.train_chars:,} train / {info.val_chars:,} val chars, "
        f"vocab {info.vocab_size})",
        "model": f"{m.num_layers} x LSTM({m.hidden_size}), embed {m.embed_size}, "
        f"dropout {m.dropout}" + (", tied" if m.tie_weights else ""),
        "parameters": fmt_int(info.params),
        "batch": batch,
        "device": f"{info.device} {info.precision}" + (" compiled" if info.compiled else ""),
        **({"threads": info.threads} if info.threads else {}),
        "length": length,
        "run": str(info.run_dir),
    }


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def step_numbers(stats) -> str:
    """Losses, learning rate and speed of a `StepStats`, as the bar and the log line show them."""
    val = stats.val_loss
    parts = [
        f"loss {_num(stats.train_loss)}",
        f"val {_num(val)}",
        f"bpc {_num(None if val is None else val / math.log(2))}",
        f"ppl {_num(None if val is None else math.exp(min(val, 700)), 2)}",
        f"lr {stats.lr:.2e}",
        f"{stats.chars_per_s:,.0f} chars/s",
    ]
    if stats.skipped:
        parts.append(f"skipped {stats.skipped}")
    return "  ".join(parts)


def plain_progress_line(stats) -> str:
    """One log line: where the run is, the time left, then the numbers."""
    if stats.budget_s is not None:
        where = f"{stats.elapsed_s / 60:.1f}/{stats.budget_s / 60:.1f} min  step {stats.step:,}"
    elif stats.total_steps:
        where = (
            f"step {stats.step:,}/{stats.total_steps:,} "
            f"({100 * stats.step / stats.total_steps:.0f}%)"
        )
    else:
        where = f"step {stats.step:,}"
    eta = "" if stats.eta_s is None else f"  ETA {fmt_duration(stats.eta_s)}"
    return f"{where}  {fmt_duration(stats.elapsed_s)}{eta}  {step_numbers(stats)}"


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


def show_verdict(result, quiet: bool = False) -> None:
    """After training: each measured reason the model is not useful (a warning line each, with
    its fix), where the model is and what its score means beside guessing, and the next
    commands with the run's real path."""
    from charlstm.training.verdict import REFERENCE_SCORES

    for warning in result.warnings:  # through --quiet, as every warning
        warn(str(warning))
    best = result.files.get("best.pt")
    if quiet or best is None or result.best_val_loss is None:
        return
    loss = result.best_val_loss
    line = f"the model: {best}, val loss {loss:.3f} nats/char ({loss / math.log(2):.2f} bpc)"
    if result.baselines is not None:
        b = result.baselines
        line += (
            f"; guessing each character from its frequency scores {b.unigram_nats:.3f}, "
            f"a uniform guess {b.uniform_nats:.3f}"
        )
    reference = REFERENCE_SCORES.get(result.data_name or "")
    if reference is not None:
        line += f"; {reference[1]} reaches {reference[0]:.3f}"
    info(line)
    info("next:")
    for command in next_commands(result):
        console.print(f"  {_escape(command)}", soft_wrap=True)  # indented: _escape alone strips


def next_commands(result) -> list[str]:
    """What to try after a run, with its real paths (quoted for a shell where needed)."""
    from shlex import quote

    best, run = quote(str(result.files["best.pt"])), quote(str(result.run_dir))
    prime = " --prime 'ROMEO:'" if result.data_name == "tinyshakespeare" else ""
    more = "--time-budget 10" if result.budget_min is not None else f"--steps {2 * result.steps}"
    return [
        f"charlstm sample {best}{prime} --length 500 --temperature 0.8",
        f"charlstm eval {best}",
        f"charlstm report {run}",
        f"charlstm train --out {run} --resume {more}",
    ]


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
        "precision": result.precision,
    }
    if result.skipped:
        rows["skipped"] = f"{fmt_int(result.skipped)} unknown characters"
    title = "evaluation (static, full stream)"
    if result.mode == "window":
        title = f"evaluation (static, window {fmt_int(result.window)})"
        hop = result.window_hop or result.window // 2
        rows["context"] = (
            f"{fmt_int(result.window - hop + 1)}..{fmt_int(result.window)} characters "
            f"(the first {fmt_int(result.window)}: 1..{fmt_int(result.window)})"
        )
    elif result.mode == "cache":
        title = "evaluation with a continuous cache (static weights)"
        c = result.cache
        rows["cache window, theta, lambda"] = f"{c['window']}, {c['theta']:g}, {c['lam']:g}"
    elif result.mode == "dynamic":
        title = "dynamic evaluation (weights adapt to the text)"
        d = result.dynamic
        rows["segment, lr, decay"] = f"{d['segment']} chars, {d['lr']:g}, {d['decay']:g}"
        where = f" ({d['stats_path']})" if d.get("stats_path") else " (not saved)"
        rows["gradient statistics"] = f"{d['stats']}{where}, {d['stats_seconds']:.1f} s"
    show_table(title, rows)


def show_report(curves) -> None:
    """The learning-curve chart and the run's summary numbers."""
    from rich.text import Text

    from charlstm.training.report import text_chart

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
    """A checkpoint's description (see `charlstm.model.checkpoint.describe`)."""
    m, v, best = facts["model"], facts["vocab"], facts["best_val"]
    data = facts.get("data") or {}
    rows = {
        "checkpoint": f"{facts['path']} ("
        + ("" if facts.get("kind", "checkpoint") == "checkpoint" else f"{facts['kind']} ")
        + f"format {facts['format_version']})",
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
    machine = getattr(report, "machine", None) or {}
    if machine.get("precision_key"):
        table.caption = (
            f"--precision auto's figures: {machine['precision_figures']}, valid for "
            f"{machine['precision_key']}"
        )
        table.caption_justify = "left"
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
    elif result.format == "safetensors":
        rows["checked"] = "read back: the checkpoint's weights, bit for bit"
        rows["next"] = f"charlstm sample {result.out}  (any command that takes a checkpoint)"
    else:
        rows["next"] = f"python examples/onnx_sample.py {result.out} --prime 'Hello'"
    show_table(f"exported ({result.format})", rows)


def show_serving(facts: Mapping) -> None:
    """Where `charlstm serve` listens (one line a script can read: the URL comes first)."""
    key = "; an API key is required" if facts["api_key_required"] else ""
    info(
        f"serving {facts['url']}  model {facts['model']!r}  playground {facts['url']}/  "
        f"API {facts['url']}/v1{key}  (Ctrl-C stops)"
    )
    for warning in facts.get("warnings", ()):
        warn(warning)


def show_paths(title: str, paths: Mapping[str, Path]) -> None:
    show_table(title, {k: str(v) for k, v in paths.items()})


def flush() -> None:
    sys.stderr.flush()


# -- charlstm inspect ---------------------------------------------------------------------------
# colour stops (value, (r, g, b)) shared in spirit with the HTML page of charlstm.inspection.html
SURPRISE_STOPS = [(0, (255, 255, 255)), (1, (255, 244, 189)), (2, (255, 214, 112)),
                  (4, (247, 141, 90)), (6, (214, 47, 47)), (9, (110, 8, 20))]  # fmt: skip
DIVERGE_STOPS = [(-1, (33, 102, 172)), (-0.5, (146, 197, 222)), (0, (247, 247, 247)),
                 (0.5, (244, 165, 130)), (1, (178, 24, 43))]  # fmt: skip
COMPARE_STOPS = [(-4, (27, 120, 55)), (-1.5, (166, 219, 160)), (0, (247, 247, 247)),
                 (1.5, (194, 165, 207)), (4, (118, 42, 131))]  # fmt: skip


def _ramp(stops, x: float) -> tuple[int, int, int] | None:
    if not math.isfinite(x):
        return None
    if x <= stops[0][0]:
        return stops[0][1]
    for (x0, c0), (x1, c1) in zip(stops[:-1], stops[1:], strict=True):
        if x <= x1:
            t = (x - x0) / (x1 - x0)
            return tuple(round(a + t * (b - a)) for a, b in zip(c0, c1, strict=True))
    return stops[-1][1]


def _cell_style(stops, x: float):
    """Background from the scale, black or white ink for contrast."""
    from rich.color import Color
    from rich.style import Style

    rgb = _ramp(stops, x)
    if rgb is None:
        return Style(dim=True)
    dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 135
    return Style(bgcolor=Color.from_rgb(*rgb), color="white" if dark else "black")


def _coloured_text(tokens, values, stops, step: float):
    """The text with each character's background coloured by its value (quantized to `step`
    so neighbours share a style and the escape codes stay few). Newlines show as ↵."""
    from rich.text import Text

    text = Text()
    cache: dict = {}
    for token, value in zip(tokens, values, strict=True):
        key = round(value / step) if math.isfinite(value) else None
        style = cache.get(key)
        if style is None:
            style = cache[key] = _cell_style(stops, key * step if key is not None else math.nan)
        if token == "\n":
            text.append("↵", style)
            text.append("\n")
        else:
            text.append(token, style)
    return text


def _legend(stops, ticks, caption: str):
    """A row of coloured blocks with their values, then what they mean."""
    from rich.text import Text

    legend = Text()
    for value, label in ticks:
        legend.append(f" {label} ", _cell_style(stops, value))
    legend.append(f"  {caption}", style="dim")
    return legend


def _visible(symbol: str) -> str:
    return {" ": "␣", "\n": "↵", "\t": "⇥", "": "(byte)"}.get(symbol, symbol)


def _context(result, i: int, before: int = 18) -> str:
    text = "".join(result.tokens[max(0, i - before) : i]).replace("\n", "↵")
    return text[-before:]


def _rule(title: str):
    from rich.rule import Rule

    return Rule(f"[bold]{title}[/]", align="left", style="dim")


def _surprisal_view(result) -> list:
    from rich.markup import escape

    bits = result.bits
    out = [
        _rule("surprisal"),
        _legend(
            SURPRISE_STOPS,
            [(v, str(v)) for v in (0, 1, 2, 3, 4, 6, 8)],
            "bits per character (-log2 p of the character that came)",
        ),
        _coloured_text(result.tokens, bits, SURPRISE_STOPS, 0.5),
    ]
    scored = max(1, result.chars)
    rank, k = result.rank[1:], result.top_ids.shape[1]
    out.append(
        key_value_table(
            "",
            {
                "bits per char": f"{result.bpc:.4f}  ({result.loss:.4f} nats/char, as "
                "charlstm eval --batch-size 1)",
                "characters scored": fmt_int(result.chars),
                "first guess right": f"{(rank == 1).sum() / scored:.1%}",
                f"in the top {k}": f"{(rank <= k).sum() / scored:.1%}",
            },
        )
    )
    spans = Table(title="most surprising spans", title_justify="left", box=None, padding=(0, 2))
    spans.add_column("at", justify="right")
    spans.add_column("bits", justify="right")
    spans.add_column("text")
    for s in result.surprising_spans():
        spans.add_row(fmt_int(s.start), f"{s.bits:.1f}", escape(s.text.replace("\n", "↵")))
    out.append(spans)
    guesses = Table(
        title=f"most surprising characters and the model's top {result.top_ids.shape[1]} guesses",
        title_justify="left",
        box=None,
        padding=(0, 1),
    )
    guesses.add_column("at", justify="right")
    guesses.add_column("context", justify="right", no_wrap=True)
    guesses.add_column("got", style="bold red")
    guesses.add_column("bits", justify="right")
    guesses.add_column("expected")
    for i in result.surprising_chars(10):
        expected = "  ".join(
            f"{_visible(result.symbols[j])} {p:.0%}"
            for j, p in zip(result.top_ids[i], result.top_probs[i], strict=True)
        )
        guesses.add_row(
            fmt_int(i),
            escape(_context(result, i)),
            escape(_visible(result.tokens[i])),
            f"{bits[i]:.1f}",
            escape(expected),
        )
    out.append(guesses)
    return out


def _neuron_view(result, cells) -> list:
    from rich.markup import escape

    table = Table(
        title="cells that track the text (best |Pearson r| over this text; c: cell state, "
        "h: output; layer:unit)",
        title_justify="left",
        box=None,
        padding=(0, 2),
    )
    table.add_column("property", no_wrap=True)
    table.add_column("chars", justify="right")
    table.add_column("best cells", no_wrap=True)  # a cell and its r never wrap apart
    table.add_column("what", style="dim")
    for p in sorted(result.probes, key=lambda p: not p.best):  # absent properties last
        best = "  ".join(f"{rc.cell.name} {rc.r:+.2f}" for rc in p.best[:3])
        best = best or "[dim]not in text[/]"
        table.add_row(p.name, fmt_int(p.support), best, escape(p.description))
    out = [_rule("neurons"), table]
    from charlstm.inspection.analysis import colour_range

    for cell, why in cells:
        values = result.activation(cell)
        scale = colour_range(values)
        what = "cell state" if cell.kind == "c" else "output h"
        out += [
            _rule(f"{cell.name}: {what} of unit {cell.unit} in layer {cell.layer}" + why),
            _legend(
                DIVERGE_STOPS,
                [(-1, f"{-scale:.2f}"), (-0.5, ""), (0, "0"), (0.5, ""), (1, f"+{scale:.2f}")],
                "its value after each character (beyond the ends: full colour)",
            ),
            _coloured_text(result.tokens, values / scale, DIVERGE_STOPS, 0.1),
        ]
    return out


def _compare_view(result) -> list:
    a = result.against
    delta = a.delta_bits(result.nats)
    scored = max(1, result.chars)
    return [
        _rule(f"comparison with {a.checkpoint}"),
        _legend(
            COMPARE_STOPS,
            [(-4, "-4"), (-2, "-2"), (0, "0"), (2, "+2"), (4, "+4")],
            "bits of this checkpoint minus the other's: green where this one is better",
        ),
        _coloured_text(result.tokens, delta, COMPARE_STOPS, 0.25),
        key_value_table(
            "",
            {
                "this checkpoint": f"{result.bpc:.4f} bits/char  {result.checkpoint}",
                "the other": f"{a.bpc:.4f} bits/char  {a.checkpoint}",
                "difference": f"{result.bpc - a.bpc:+.4f} bits/char",
                "this one better on": f"{(delta[1:] < -0.01).sum() / scored:.1%} of characters",
                "the other better on": f"{(delta[1:] > 0.01).sum() / scored:.1%} of characters",
            },
        ),
    ]


class _StderrPager:
    """Rich pager that runs `$PAGER` (default `less -R`) on the terminal stderr is attached to,
    so stdout stays free for data; prints plainly if the pager cannot start."""

    def show(self, content: str) -> None:
        import shlex
        import subprocess

        env = dict(os.environ)
        env.setdefault("LESS", "FRX")  # keep colours, quit if it fits, leave it on screen
        command = shlex.split(env.get("PAGER") or "less") or ["less"]
        try:
            sys.stderr.flush()
            subprocess.run(
                command, input=content.encode(), stdout=sys.stderr.fileno(), env=env, check=False
            )
        except (OSError, ValueError, AttributeError):  # no pager, or stderr is not a file
            sys.stderr.write(content)


def show_inspection(result, views, page: bool = True) -> None:
    """The views of `charlstm inspect` (surprisal, neurons, compare) on stderr, through a pager
    when stderr is a terminal and `page`."""
    from charlstm.inspection.analysis import default_cell

    header = {
        "checkpoint": f"{result.checkpoint} ({result.model})",
        "text": result.source
        + (f", the first {fmt_int(len(result.tokens))} characters" if result.excerpt else ""),
        "bits per char": f"{result.bpc:.4f} over {fmt_int(result.chars)} characters",
    }
    if result.skipped:
        header["skipped"] = f"{fmt_int(result.skipped)} unknown characters"
    parts: list = [key_value_table("charlstm inspect", header)]
    for view in views:
        if view == "surprisal":
            parts += _surprisal_view(result)
        elif view == "neurons":
            if result.neurons:
                cells = [(cell, "") for cell in result.neurons]
            else:
                cells, seen = [], set()
                for p in result.probes:
                    if p.best and p.best[0].cell not in seen:
                        seen.add(p.best[0].cell)
                        cells.append((p.best[0].cell, f", tracks {p.name} (r {p.best[0].r:+.2f})"))
                if not cells:
                    cells = [(default_cell(result)[0], "")]
            parts += _neuron_view(result, cells)
        elif view == "compare" and result.against is not None:
            parts += _compare_view(result)
    if page and interactive() and not console.quiet:
        with console.pager(pager=_StderrPager(), styles=True):
            for part in parts:
                console.print(part)
    else:
        for part in parts:
            console.print(part)


def show_inspect_summary(result) -> None:
    """One line: the text's bits per char (when only a page or JSON was asked for)."""
    info(f"{result.source}: {result.bpc:.4f} bits/char over {fmt_int(result.chars)} characters")
