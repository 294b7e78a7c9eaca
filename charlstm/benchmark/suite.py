"""`bench`: charlstm's speed measured against this machine's own limits, in one run.

Every figure comes with the limit it should be compared with, measured in the same process a
moment before: dense matmul GFLOP/s at the model's own shapes (training), and the rate at which
a GEMV can stream a matrix the size of the model's weights (batch-1 sampling, which must read
every weight once per character). Ratios, not absolute seconds, are what carry between
machines and survive a noisy neighbour.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charlstm.atomic import atomic_open
from charlstm.benchmark.scratch import disk_needed, work_folder
from charlstm.config import PRESETS, ModelConfig, cache_root
from charlstm.errors import CharLSTMError, OptionError
from charlstm.runtime import (
    CPU_RATES_FILE,
    bf16_gemm_speedup,
    cpu_flags,
    has_bf16_units,
    machine_key,
)


@dataclass
class Row:
    section: str
    name: str
    value: float
    unit: str
    note: str = ""
    ratio: float | None = None  # against the limit named in note
    target: float | None = None  # the ratio we aim for

    @property
    def ok(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        return self.ratio >= self.target


@dataclass
class BenchReport:
    rows: list[Row] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def to_dict(self) -> dict:
        return {"machine": self.machine, "rows": [r.__dict__ | {"ok": r.ok} for r in self.rows]}


def _timeit(
    fn: Callable[[], object],
    min_time: float = 0.3,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> float:
    """Seconds per call: the best of a few repeated batches (robust to a noisy neighbour).
    `sync` waits for queued work (a GPU's) at the end of each batch, so that it is counted once
    a batch, not once a call."""
    for _ in range(warmup):
        fn()
    sync()
    calls, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time / 3:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(2):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def matmul_gflops(m: int, k: int, n: int, dtype=torch.float32, min_time: float = 0.3) -> float:
    """Dense (m x k) @ (k x n) throughput in GFLOP/s."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    out = torch.empty(m, n, dtype=dtype)
    seconds = _timeit(lambda: torch.mm(a, b, out=out), min_time)
    return 2 * m * k * n / seconds / 1e9


def gemv_gbytes(n_bytes: int, dtype=torch.float32, min_time: float = 0.3) -> float:
    """GB/s at which a matrix-vector product streams a matrix of about n_bytes."""
    elem = torch.tensor([], dtype=dtype).element_size()
    cols = 1024
    rows = max(1, n_bytes // (elem * cols))
    w = torch.randn(rows, cols).to(dtype)
    x = torch.randn(1, cols).to(dtype)
    out = torch.empty(1, rows, dtype=dtype)
    seconds = _timeit(lambda: torch.mm(x, w.T, out=out), min_time)
    return rows * cols * elem / seconds / 1e9


def read_gbytes(n_bytes: int = 512 << 20, min_time: float = 0.3) -> float:
    """Main-memory read bandwidth: summing an array far larger than the caches."""
    a = torch.ones(n_bytes // 4)
    seconds = _timeit(lambda: a.sum(), min_time, warmup=1)
    return n_bytes / seconds / 1e9


def lstm_flops_per_char(cfg: ModelConfig) -> tuple[float, float]:
    """(forward matmul FLOPs per character, of which recurrent), LSTM + head (+ the embedding
    look-up, which is no arithmetic). Backward costs twice the forward."""
    H, E, V, L = cfg.hidden_size, cfg.embed_size, cfg.vocab_size, cfg.num_layers
    input_proj = 2 * 4 * H * E + (L - 1) * 2 * 4 * H * H
    recurrent = L * 2 * 4 * H * H
    head = 2 * H * V
    return input_proj + recurrent + head, recurrent


def ideal_step_seconds(
    cfg: ModelConfig, batch: int, bptt: int, min_time: float, dtype=torch.float32
) -> tuple[float, dict]:
    """Seconds a forward+backward step would take if every matmul ran at the `dtype` rate
    measured at its own shape: the input projections as (B*T x in) @ (in x 4H), the recurrence
    as (B x H) @ (H x 4H), the head as (B*T x H) @ (H x V)."""
    H, E, V, L = cfg.hidden_size, cfg.embed_size, cfg.vocab_size, cfg.num_layers
    rates = {
        "input_proj": matmul_gflops(batch * bptt, E, 4 * H, dtype, min_time=min_time),
        "recurrent": matmul_gflops(batch, H, 4 * H, dtype, min_time=min_time),
        "head": matmul_gflops(batch * bptt, H, V, dtype, min_time=min_time),
    }
    if L > 1:
        rates["input_proj_hh"] = matmul_gflops(batch * bptt, H, 4 * H, dtype, min_time=min_time)
    chars = batch * bptt
    flops = {
        "input_proj": 2 * 4 * H * E * chars,
        "input_proj_hh": (L - 1) * 2 * 4 * H * H * chars,
        "recurrent": L * 2 * 4 * H * H * chars,
        "head": 2 * H * V * chars,
    }
    seconds = sum(3 * f / (rates[k] * 1e9) for k, f in flops.items() if f)
    return seconds, rates


def reference_train_chars_per_s(
    cfg: ModelConfig, batch: int, bptt: int, steps: int, ids: np.ndarray
) -> float:
    """A plain loop, written here the way a tutorial would: nn.Embedding + nn.LSTM + nn.Linear,
    Adam, the same sizes, batches and dropouts (on the embedding, between layers, before the
    head), carried detached state, no logging, no eval: the same arithmetic as charlstm's
    model, so the ratio between the two is what the trainer itself costs."""
    torch.manual_seed(0)
    emb = nn.Embedding(cfg.vocab_size, cfg.embed_size)
    lstm = nn.LSTM(cfg.embed_size, cfg.hidden_size, cfg.num_layers, dropout=cfg.dropout)
    head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    stream = len(ids) // batch
    data = torch.from_numpy(np.asarray(ids[: stream * batch], dtype=np.int64)).view(batch, -1).T
    state = None
    step_seconds = []
    for step in range(steps + 2):
        start = time.perf_counter()
        pos = (step * bptt) % (stream - bptt - 1)
        x, y = data[pos : pos + bptt], data[pos + 1 : pos + bptt + 1]
        out, state = lstm(F.dropout(emb(x), cfg.dropout), state)
        logits = head(F.dropout(out, cfg.dropout))
        loss = F.cross_entropy(logits.view(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state = (state[0].detach(), state[1].detach())
        if step >= 2:  # after warm-up; the median step, like charlstm's figure
            step_seconds.append(time.perf_counter() - start)
    return batch * bptt / float(np.median(step_seconds))


def charlstm_train_chars_per_s(
    data_folder: Path, preset: str, steps: int, workdir: Path, precision: str = "fp32"
) -> tuple[float, float, float]:
    """charlstm's own trainer on real data: (chars/s of the whole short run, chars/s of its
    steady state — data pipeline, step and logging included —, and the share of a 10-minute
    run that its periodic validation and checkpoints take, from their measured times)."""
    import json

    from charlstm.config import resolve_config
    from charlstm.evaluation.scoring import stream_count, stream_nats
    from charlstm.model.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from charlstm.training.schedule import planned_evaluations
    from charlstm.training.trainer import train

    run = workdir / f"train-{preset}"
    result = train(
        data_folder,
        run,
        preset=preset,
        steps=steps,
        eval_every=10**9,
        log_every=1,  # one rate per step: the median step, like the reference
        force=True,
        device="cpu",
        warmup_steps=0,
        precision=precision,
        threads=torch.get_num_threads(),  # as the reference loop: no thread trial in 12 steps
    )
    if result.interrupted:  # Ctrl-C or SIGTERM stopped the run: it stops the bench too
        raise KeyboardInterrupt
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steady = [r["chars_per_s"] for r in records if r["kind"] == "train"][1:]
    steady_cps = float(np.median(steady)) if steady else result.chars_per_s
    model = load_checkpoint(run / "last.pt").model
    val = np.load(Path(data_folder) / "val.npy", mmap_mode="r")
    ten_minutes = resolve_config(preset, device="cpu", time_budget_min=10)
    streams = stream_count(len(val), ten_minutes.eval_batch_size)
    start = time.perf_counter()
    stream_nats(model, val, streams)
    eval_s = time.perf_counter() - start
    payload = read_checkpoint(run / "last.pt")
    start = time.perf_counter()
    save_checkpoint(payload, run / "timing.pt")
    save_s = time.perf_counter() - start
    steps_per_s = steady_cps / (ten_minutes.batch_size * ten_minutes.bptt)
    evals = planned_evaluations(ten_minutes, steps_per_s, 600)
    overhead = evals * (eval_s + 2 * save_s) / 600  # last.pt, and best.pt when it improves
    return result.chars_per_s, steady_cps, overhead


def sample_chars_per_s(model, batch: int, length: int, dtype=torch.float32) -> float:
    from charlstm.generation.sampling import FastLSTMStep

    step = FastLSTMStep(model, batch, dtype)
    tokens = torch.zeros(batch, dtype=torch.long)
    for _ in range(10):
        step(tokens)
    start = time.perf_counter()
    for _ in range(length):
        logits = step(tokens)
        tokens = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
    return batch * length / (time.perf_counter() - start)


def greedy_disagreement_per_1000(model, ids: np.ndarray, dtype=torch.bfloat16) -> float:
    """How often (per 1000 characters) the most likely next character differs between fp32
    and `dtype` weights, both fed the same real text (teacher forcing, so one early
    difference does not snowball into a different text)."""
    from charlstm.generation.sampling import FastLSTMStep

    ref, low = FastLSTMStep(model, 1), FastLSTMStep(model, 1, dtype)
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    differ = 0
    for t in range(len(tokens)):
        x = tokens[t : t + 1]
        differ += int(ref(x).argmax() != low(x).argmax())
    return 1000 * differ / len(tokens)


def nn_lstm_step_chars_per_s(model, length: int) -> float:
    """The naive loop: nn.LSTM called with one time step per character (batch 1)."""
    tokens = torch.zeros(1, 1, dtype=torch.long)
    state = None
    with torch.no_grad():
        for _ in range(10):
            _, state = model(tokens, state)
        start = time.perf_counter()
        for _ in range(length):
            logits, state = model(tokens, state)
            tokens = torch.multinomial(torch.softmax(logits[0], -1), 1)
    return length / (time.perf_counter() - start)


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory (MB) of a child process running `args`: its own peak, from the
    resource usage `wait4` returns for it alone. When the bench is stopped (Ctrl-C, SIGTERM)
    the child is stopped as a user's Ctrl-C would stop it, so it removes its own partial
    output, and only then does the bench go on stopping."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            stop_child(proc)
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:]
            raise CharLSTMError(
                f"the bench's `{' '.join(args[2:4])}` failed (exit {proc.returncode}): "
                f"{' '.join(tail)}"
            )
    return usage.ru_maxrss / 1024


def stop_child(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop a child as Ctrl-C does (it may already have had the terminal's), then for good."""
    import signal

    for action in (None, lambda: proc.send_signal(signal.SIGINT), proc.kill):
        if action is not None:
            action()
        try:
            proc.wait(timeout=2 if action is None else grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def make_text(path: Path, n_bytes: int, seed: int = 0) -> Path:
    """A UTF-8 text of about n_bytes: the bundled corpus repeated, with ~2% CJK characters
    (over 256 distinct, so the ids need uint16) and a few emoji spliced in."""
    from charlstm.data.corpus import bundled_corpus

    if path.exists() and abs(path.stat().st_size - n_bytes) < (1 << 20):
        return path
    base = bundled_corpus().read_text(encoding="utf-8")
    rng = np.random.default_rng(seed)
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 600)]
    emoji = ["\U0001f600", "\U0001f680", "\u00e9", "\u00fc", "\u2014"]
    lines = base.split("\n")
    size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:  # stopped half way, no partial text is left
        while size < n_bytes:
            chunk_lines = []
            for line in lines:
                r = rng.random()
                if r < 0.06:
                    line = line + " " + "".join(rng.choice(cjk, size=int(rng.integers(3, 12))))
                elif r < 0.065:
                    line = line + " " + str(rng.choice(emoji))
                chunk_lines.append(line)
            chunk = "\n".join(chunk_lines) + "\n"
            f.write(chunk)
            size += len(chunk.encode("utf-8"))
    return path


@dataclass
class BenchContext:
    """What every section needs: the scratch folder, tiny shakespeare tokenized once, options."""

    work: Path
    dataset: object  # charlstm.data.dataset.Dataset of tiny shakespeare
    presets: list[str]
    corpus_mb: int
    quick: bool
    checkpoint: Path | None
    say: Callable[[str], None]

    @property
    def min_time(self) -> float:
        return 0.1 if self.quick else 0.3

    @property
    def data_dir(self) -> Path:
        return self.dataset.folder

    def small_checkpoint(self) -> Path:
        """A small-preset checkpoint for the eval and sample sections: the one passed, else an
        untrained one made here (speed depends on size, not training)."""
        if self.checkpoint is not None:
            return self.checkpoint
        path = self.work / "train-small" / "last.pt"
        if not path.exists():
            charlstm_train_chars_per_s(self.data_dir, "small", 2, self.work)
        return path


#: rows of a bf16 matmul timed where the CPU has no bf16 units (emulated: the rate, not
#: the size, is the figure)
EMULATED_BF16_ROWS = 32


def bench_limits(ctx: BenchContext, report: BenchReport) -> None:
    """fp32/bf16 matmul at the model's shapes, and memory read bandwidth."""
    ctx.say("measuring machine limits")
    p = PRESETS["small"]
    B, T, H, E = p["batch_size"], p["bptt"], p["hidden_size"], p["embed_size"]
    flags = cpu_flags()
    bf16_units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    # without bf16 units bf16 is emulated, ~100x slower than fp32 (0.5 GFLOP/s on an AVX2-only
    # EPYC): its rate is timed on a few rows, or the section takes minutes
    emulated = bool(flags) and not bf16_units
    note = f"; timed on {EMULATED_BF16_ROWS} rows: emulated" if emulated else ""

    def rows(m: int) -> int:
        return min(m, EMULATED_BF16_ROWS) if emulated else m

    for m, k, n in ((B * T, E, 4 * H), (B * T, H, 4 * H), (B, H, 4 * H)):
        fp32 = matmul_gflops(m, k, n, min_time=ctx.min_time)
        bf16 = matmul_gflops(rows(m), k, n, torch.bfloat16, min_time=ctx.min_time)
        report.add("limits", f"fp32 matmul {m}x{k} @ {k}x{n}", fp32, "GFLOP/s")
        report.add(
            "limits",
            f"bf16 matmul {m}x{k} @ {k}x{n}",
            bf16,
            "GFLOP/s",
            note="vs fp32 at this shape" + note,
            ratio=bf16 / fp32,
        )
    report.add(
        "limits",
        "fp32 matmul 1024^3",
        matmul_gflops(1024, 1024, 1024, min_time=ctx.min_time),
        "GFLOP/s",
    )
    report.add(
        "limits",
        "bf16 matmul 1024^3",
        matmul_gflops(rows(1024), 1024, 1024, torch.bfloat16, min_time=ctx.min_time),
        "GFLOP/s",
        note=f"CPU bf16 units: {', '.join(bf16_units) or 'none reported'}{note}" if flags else "",
    )
    if bf16_units:
        report.add(
            "limits",
            "bf16 / fp32 GEMM time, weighted like a training window",
            bf16_gemm_speedup(),
            "x",
            note="one 4096x512 @ 512x2048 input GEMM + 128 recurrent 32x512 @ 512x2048 ones",
        )
    report.add("limits", "memory read (512 MB sum)", read_gbytes(min_time=ctx.min_time), "GB/s")


def bench_tokenize(ctx: BenchContext, report: BenchReport) -> None:
    """Whole-process tokenize speed and peak memory on the generated big text."""
    text = make_text(ctx.work / f"text-{ctx.corpus_mb}mb.txt", ctx.corpus_mb << 20)
    mb = text.stat().st_size / 1e6
    for level in ("char", "byte"):
        ctx.say(f"tokenizing {mb:.0f} MB at {level} level")
        start = time.perf_counter()
        rss = peak_rss_mb(
            [
                sys.executable,
                "-m",
                "charlstm",
                "tokenize",
                str(text),
                "--out",
                str(ctx.work / f"tok-{level}"),
                "--level",
                level,
                "--force",
            ]
        )
        seconds = time.perf_counter() - start
        report.add(
            "tokenize",
            f"{level} level, {mb:.0f} MB, whole process",
            mb / seconds,
            "MB/s",
            note="target >= 50 MB/s",
            ratio=mb / seconds / 50,
            target=1.0,
        )
        report.add(
            "tokenize",
            f"{level} level peak RSS",
            rss,
            "MB",
            note=f"{rss / mb:.2f}x the text (target <= 3x)",
            ratio=3 * mb / rss,
            target=1.0,
        )


def bench_train(ctx: BenchContext, report: BenchReport) -> None:
    """Training chars/s per preset against its matmuls and a plain reference loop, for the
    fp32 path and, on CPUs with bf16 units, the bf16 LSTM kernel (`--precision bf16`)."""
    from charlstm.runtime import keep_freed_memory

    keep_freed_memory()  # what `train` does on a CPU, here from the start for every side
    with_bf16 = has_bf16_units()
    for name in ctx.presets:
        p = PRESETS[name]
        cfg = ModelConfig(
            vocab_size=ctx.dataset.vocab.size,
            **{k: p[k] for k in ("embed_size", "hidden_size", "num_layers", "dropout")},
        )
        ctx.say(f"training speed, preset {name}")
        rounds = _train_rounds(ctx, name, cfg, with_bf16)
        steady = _report_train_fp32(ctx, report, name, cfg, rounds)
        if with_bf16:
            _report_train_bf16(ctx, report, name, cfg, rounds, steady)


def _train_rounds(ctx: BenchContext, name: str, cfg: ModelConfig, with_bf16: bool) -> list:
    """(charlstm fp32, the reference loop, charlstm bf16 or None) per round: the three take
    turns, so a slow minute on a shared machine lands on every side of the ratios rather than
    on one."""
    p = PRESETS[name]
    steps = {"tiny": 60, "small": 12, "medium": 4, "large": 2}[name]
    train_ids = ctx.dataset.split("train")
    rounds = []
    for _ in range(1 if ctx.quick else 5):
        mine = charlstm_train_chars_per_s(ctx.data_dir, name, steps, ctx.work, "fp32")
        theirs = reference_train_chars_per_s(cfg, p["batch_size"], p["bptt"], steps, train_ids)
        bf16 = (
            charlstm_train_chars_per_s(ctx.data_dir, name, steps, ctx.work, "bf16")
            if with_bf16
            else None
        )
        rounds.append((mine, theirs, bf16))
    return rounds


def _report_train_fp32(ctx, report: BenchReport, name: str, cfg: ModelConfig, rounds) -> float:
    """The fp32 loop against its matmuls and the reference loop, and the share of validation
    and checkpoints in a 10-minute run; returns its steady chars/s."""
    B, T = PRESETS[name]["batch_size"], PRESETS[name]["bptt"]
    ideal_s, _ = ideal_step_seconds(cfg, B, T, ctx.min_time)
    steady = float(np.median([mine[1] for mine, _, _ in rounds]))
    ref = float(np.median([theirs for _, theirs, _ in rounds]))
    vs_ref = float(np.median([mine[1] / theirs for mine, theirs, _ in rounds]))
    overhead = float(np.median([mine[2] for mine, _, _ in rounds]))
    fwd, _ = lstm_flops_per_char(cfg)
    achieved = 3 * fwd * steady / 1e9
    gated = name != "tiny"  # the tiny preset is for tests: no targets
    report.add(
        "train",
        f"{name}: charlstm chars/s (whole loop, fp32)",
        steady,
        "chars/s",
        note=f"{achieved:.0f} GFLOP/s counted; vs its matmuls at the fp32 rates "
        "measured at its own shapes (target >= 0.85x)",
        ratio=steady * ideal_s / (B * T),
        target=0.85 if gated else None,
    )
    report.add(
        "train",
        f"{name}: reference loop chars/s",
        ref,
        "chars/s",
        note="nn.Embedding+nn.LSTM+nn.Linear+Adam, same dropouts, no bookkeeping; "
        "charlstm fp32 vs this, median of alternating rounds (target >= 1.0x)",
        ratio=vs_ref,
        target=1.0 if gated else None,
    )
    report.add(
        "train",
        f"{name}: validation + checkpoints in a 10-min run",
        100 * overhead,
        "%",
        note="measured eval and save times x their count in a --time-budget 10 run (target < 5%)",
        ratio=0.05 / max(overhead, 1e-9),
        target=1.0 if gated else None,
    )
    return steady


def _report_train_bf16(ctx, report, name: str, cfg: ModelConfig, rounds, steady: float) -> None:
    """The bf16 kernel against fp32 and its matmuls at bf16 rates, and what `--precision auto`
    picks here against the faster of the two."""
    from charlstm.config import resolve_config
    from charlstm.model import native
    from charlstm.training.kernel import choose_kernel

    B, T = PRESETS[name]["batch_size"], PRESETS[name]["bptt"]
    gated = name != "tiny"
    fwd, _ = lstm_flops_per_char(cfg)
    ideal_bf16_s, _ = ideal_step_seconds(cfg, B, T, ctx.min_time, torch.bfloat16)
    bf16_steady = float(np.median([bf16[1] for _, _, bf16 in rounds]))
    vs_fp32 = float(np.median([bf16[1] / mine[1] for mine, _, bf16 in rounds]))
    auto = choose_kernel(
        resolve_config(name, device="cpu"), ctx.dataset.vocab.size, torch.device("cpu")
    )
    picked = auto.kernel
    cells = "C" if native.cell_kernels() else f"ATen ops ({native.unavailable_reason})"
    report.add(
        "train",
        f"{name}: charlstm chars/s (whole loop, bf16 LSTM)",
        bf16_steady,
        "chars/s",
        note=f"--precision bf16 vs fp32, median of alternating rounds (target >= 1.7x); "
        f"--precision auto picks {picked} here; cell kernels: {cells}",
        ratio=vs_fp32,
        target=1.7 if gated else None,
    )
    report.add(
        "train",
        f"{name}: bf16 LSTM vs its matmuls at bf16 rates",
        3 * fwd * bf16_steady / 1e9,
        "GFLOP/s",
        note="counted GFLOP/s; ratio: chars/s vs every matmul at the bf16 rate measured "
        "at its own shape (target >= 0.6x)",
        ratio=bf16_steady * ideal_bf16_s / (B * T),
        target=0.6 if gated else None,
    )
    measured_here = {"fp32": steady, "bf16": bf16_steady}
    report.add(
        "train",
        f"{name}: --precision auto",
        measured_here[picked],
        "chars/s",
        note=f"picks {picked} ({auto.describe()}); ratio: vs the faster of fp32 and bf16 "
        "in this run (target >= 0.95x)",
        ratio=measured_here[picked] / max(measured_here.values()),
        target=0.95 if gated else None,
    )


def bench_eval(ctx: BenchContext, report: BenchReport) -> None:
    """Evaluation chars/s (64 streams, and the 1-stream reference) against training."""
    from charlstm.evaluation.scoring import stream_nats
    from charlstm.model.checkpoint import load_checkpoint

    ctx.say("eval speed")
    model = load_checkpoint(ctx.small_checkpoint()).model
    val = ctx.dataset.split("val")
    chars = min(len(val), 20000 if ctx.quick else 60000)
    start = time.perf_counter()
    stream_nats(model, val[:chars], batch_size=64)
    eval_cps = chars / (time.perf_counter() - start)
    train_rows = [r for r in report.rows if r.name == "small: charlstm chars/s (whole loop, fp32)"]
    train_cps = train_rows[0].value if train_rows else None
    report.add(
        "eval",
        "small: eval chars/s (64 streams)",
        eval_cps,
        "chars/s",
        note="vs training chars/s at the same size (target >= 2.5x)",
        ratio=eval_cps / train_cps if train_cps else None,
        target=2.5 if train_cps else None,
    )
    start = time.perf_counter()
    stream_nats(model, val[: chars // 10], batch_size=1)
    report.add(
        "eval",
        "small: eval chars/s (1 stream, reference)",
        chars // 10 / (time.perf_counter() - start),
        "chars/s",
    )


def bench_sample(ctx: BenchContext, report: BenchReport) -> None:
    """Batch-1 sampling against the weight-bandwidth bound, bf16 weights, batch 32."""
    from charlstm.model.checkpoint import load_checkpoint

    ctx.say("sampling speed")
    model = load_checkpoint(ctx.small_checkpoint()).model
    weight_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if "embedding" not in n)
    # the bound, as batch-1 generation defines it: every weight read once per character at
    # the machine's memory read bandwidth; the in-cache GEMV rate is the stricter figure
    # for a model small enough to stay in the last-level cache
    dram = read_gbytes(min_time=ctx.min_time)
    in_cache = gemv_gbytes(weight_bytes, min_time=ctx.min_time)
    bound, cache_bound = dram * 1e9 / weight_bytes, in_cache * 1e9 / weight_bytes
    length = 1000 if ctx.quick else 3000
    fast = sample_chars_per_s(model, 1, length)
    naive = nn_lstm_step_chars_per_s(model, length // 2)
    report.add(
        "limits",
        f"GEMV over {weight_bytes / 1e6:.1f} MB (small's weights, in cache)",
        in_cache,
        "GB/s",
    )
    report.add(
        "sample",
        "small: batch 1 chars/s",
        fast,
        "chars/s",
        note=f"bound {bound:,.0f} chars/s = memory read GB/s / weight bytes (target >= 70%)",
        ratio=fast / bound,
        target=0.7,
    )
    report.add(
        "sample",
        "small: batch 1 vs the in-cache bound",
        fast,
        "chars/s",
        note=f"stricter bound {cache_bound:,.0f} chars/s: weights read from cache at the GEMV rate",
        ratio=fast / cache_bound,
    )
    report.add(
        "sample",
        "small: nn.LSTM one step per call",
        naive,
        "chars/s",
        note="charlstm batch 1 vs this loop (target >= 3x)",
        ratio=fast / naive,
        target=3.0,
    )
    bf16 = sample_chars_per_s(model, 1, length, torch.bfloat16)
    differ = greedy_disagreement_per_1000(model, ctx.dataset.split("val")[:2000])
    trained = ctx.checkpoint is not None
    report.add(
        "sample",
        "small: batch 1 chars/s, bf16 weights",
        bf16,
        "chars/s",
        note=f"vs fp32 batch 1; greedy choice differs on {differ:.1f} per 1000 chars of "
        "val text" + ("" if trained else " (untrained model: pass --checkpoint)"),
        ratio=bf16 / fast,
    )
    b32 = sample_chars_per_s(model, 32, length // 4)
    report.add(
        "sample", "small: batch 32 chars/s", b32, "chars/s", note="vs batch 1", ratio=b32 / fast
    )


def bench_memory(ctx: BenchContext, report: BenchReport) -> None:
    """Training's peak RSS on tiny shakespeare against the big generated text."""
    from charlstm.data.prepare import tokenize

    ctx.say("training memory on a 1 MB and a big corpus")
    big = make_text(ctx.work / f"text-{ctx.corpus_mb}mb.txt", ctx.corpus_mb << 20)
    big_dir = ctx.work / "tok-char"
    if not (big_dir / "meta.json").exists():
        tokenize(big, big_dir, force=True)
    rss = {}
    for label, folder in (("1 MB", ctx.data_dir), (f"{ctx.corpus_mb} MB", big_dir)):
        out = ctx.work / f"rss-{label.replace(' ', '')}"
        rss[label] = peak_rss_mb(
            [
                sys.executable,
                "-m",
                "charlstm",
                "train",
                str(folder),
                "--out",
                str(out),
                "--preset",
                "tiny",
                "--steps",
                "20",
                "--eval-every",
                "1000000",
                "--force",
                "--quiet",
                "--device",
                "cpu",
                "--eval-batch-size",
                "256",
            ]
        )
    big_rss = rss[f"{ctx.corpus_mb} MB"]
    delta = big_rss - rss["1 MB"]
    report.add("memory", "train peak RSS, tiny shakespeare", rss["1 MB"], "MB")
    report.add(
        "memory",
        f"train peak RSS, {ctx.corpus_mb} MB corpus",
        big_rss,
        "MB",
        note=f"+{delta:.0f} MB (target <= +300 MB)",
        ratio=300 / max(delta, 1e-9) if delta > 0 else math.inf,
        target=1.0,
    )


#: the sections of `charlstm bench`, in the order they run (`--section NAME` picks some)
SECTIONS: dict[str, Callable[[BenchContext, BenchReport], None]] = {
    "limits": bench_limits,
    "tokenize": bench_tokenize,
    "train": bench_train,
    "eval": bench_eval,
    "sample": bench_sample,
    "memory": bench_memory,
}


def run_bench(
    *,
    presets: list[str] | None = None,
    corpus_mb: int = 100,
    workdir: str | Path | None = None,
    quick: bool = False,
    sections: set[str] | None = None,
    checkpoint: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the chosen sections (default: all of SECTIONS) and return their rows."""
    from charlstm.data.dataset import load_dataset
    from charlstm.data.prepare import tokenize
    from charlstm.model.checkpoint import load_checkpoint

    # every option is checked before anything is measured or written
    unknown = set(sections or ()) - set(SECTIONS)
    if unknown:
        raise OptionError(
            f"unknown --section {', '.join(sorted(unknown))}", f"use {', '.join(SECTIONS)}"
        )
    chosen = set(SECTIONS) if sections is None else set(sections)
    if isinstance(corpus_mb, bool) or not isinstance(corpus_mb, int) or corpus_mb < 1:
        raise OptionError(
            f"--corpus-mb {corpus_mb} is not a size: give a whole number of MB, at least 1",
            "e.g. --corpus-mb 100 (the default)",
        )
    presets = presets or (["tiny", "small"] if quick else ["tiny", "small", "medium"])
    if checkpoint is not None:  # loaded safely (no pickled code runs), now, not minutes later
        load_checkpoint(checkpoint)
    need = disk_needed(corpus_mb, presets, chosen)
    with work_folder(workdir, need) as work:
        data_dir = work / "tinyshakespeare"  # tokenized once for the train/eval/sample sections
        if not (data_dir / "meta.json").exists():
            tokenize(None, data_dir, force=True)
        ctx = BenchContext(
            work=work,
            dataset=load_dataset(data_dir),
            presets=presets,
            corpus_mb=corpus_mb,
            quick=quick,
            checkpoint=Path(checkpoint) if checkpoint else None,
            say=progress or (lambda _msg: None),
        )
        report = BenchReport()
        report.machine = {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            # where --precision auto files what it measured, and the key its figures are for
            "precision_figures": str(cache_root() / CPU_RATES_FILE),
            "precision_key": machine_key(),
        }
        for name, section in SECTIONS.items():
            if name in chosen:
                section(ctx, report)
    return report
