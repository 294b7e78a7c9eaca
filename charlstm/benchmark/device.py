"""`bench --device DEV`: training and sampling on one device (a GPU; the same code runs on a CPU)
against that device's own limits, measured in the same run a moment before.

Training is compared with the matmul rate at the model's own shapes in the same precision
(fp32, TF32, bf16): every matmul of a step at its measured rate is the step's floor, so
`chars/s x floor seconds per char` is the share of the device's matmul rate the whole loop
reaches. Batch-1 sampling must read every weight once per character, so the memory read
bandwidth over the weight bytes bounds it. On CUDA the training rates are recorded for
`--precision auto` (`charlstm.runtime.record_cuda_rates`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from charlstm.benchmark.suite import BenchReport, _timeit, lstm_flops_per_char
from charlstm.config import PRESETS, ModelConfig
from charlstm.runtime import (
    cuda_precision,
    has_bf16_units,
    record_cuda_rates,
    resolve_device,
    use_tf32,
)

#: the sections of `charlstm bench --device DEV`, in the order they run
DEVICE_SECTIONS = ("limits", "train", "sample")
#: the goals the GPU check shows against (docs/gpu.md)
TRAIN_TARGET = 0.7  # of the matmul rate at the model's shapes
SAMPLE_TARGET = 0.9  # of the memory-bandwidth bound, batch 1


def device_precisions(device: torch.device) -> list[str]:
    """The precisions a device trains in: on CUDA strict fp32, TF32 (Ampere on) and bf16
    autocast (where native); on a CPU fp32 and, with bf16 units, the bf16 LSTM kernel."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)  # Ampere on: TF32 and bf16 cores
        return ["fp32", "tf32", "bf16"] if major >= 8 else ["fp32"]
    if device.type == "cpu" and has_bf16_units():
        return ["fp32", "bf16"]
    return ["fp32"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str):
    """TF32 on for `tf32` only, for the duration (CUDA); the flags are restored after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    use_tf32(precision == "tf32")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def seconds_per_call(fn: Callable[[], object], device: torch.device, min_time: float) -> float:
    """`suite._timeit` synchronised once a batch of calls (a GPU queues them)."""
    return _timeit(fn, min_time, warmup=1, sync=lambda: synchronize(device))


def matmul_gflops(
    m: int, k: int, n: int, precision: str, device: torch.device, min_time: float
) -> float:
    """(m x k) @ (k x n) GFLOP/s on `device` in `precision` (bf16 inputs, or fp32 with or
    without TF32)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    with matmul_precision(device, precision):
        seconds = seconds_per_call(lambda: torch.mm(a, b, out=out), device, min_time)
    return 2 * m * k * n / seconds / 1e9


def read_gbytes(device: torch.device, min_time: float) -> float:
    """Memory read bandwidth: summing an fp32 array far larger than the caches (1 GiB on a GPU,
    whose last-level cache holds tens of MB; 512 MiB on a CPU)."""
    n_bytes = (1 << 30) if device.type == "cuda" else (512 << 20)
    a = torch.ones(n_bytes // 4, device=device)
    seconds = seconds_per_call(lambda: a.sum(), device, min_time)
    return n_bytes / seconds / 1e9


def model_shapes(cfg: ModelConfig, batch: int, bptt: int) -> dict[str, tuple[int, int, int, int]]:
    """A training step's matmuls: name -> (m, k, n, how many per window), forward."""
    H, E, V, L = cfg.hidden_size, cfg.embed_size, cfg.vocab_size, cfg.num_layers
    shapes = {
        "input_proj": (batch * bptt, E, 4 * H, 1),
        "recurrent": (batch, H, 4 * H, L * bptt),
        "head": (batch * bptt, H, V, 1),
    }
    if L > 1:
        shapes["input_proj_hh"] = (batch * bptt, H, 4 * H, L - 1)
    return shapes


def floor_seconds_per_char(
    cfg: ModelConfig, batch: int, bptt: int, rates: dict[str, float]
) -> float:
    """Seconds per character if every matmul of forward + backward (3x the forward's FLOPs)
    ran at the rate measured at its own shape."""
    seconds = 0.0
    for name, (m, k, n, count) in model_shapes(cfg, batch, bptt).items():
        seconds += 3 * 2 * m * k * n * count / (rates[name] * 1e9)
    return seconds / (batch * bptt)


@dataclass
class DeviceBench:
    """What every section needs: the device, tiny shakespeare tokenized once, the options."""

    device: torch.device
    work: Path
    data_dir: Path
    vocab_size: int
    presets: list[str]
    quick: bool
    say: Callable[[str], None]
    measured: dict = field(default_factory=dict)  # (preset, precision) -> matmul rates

    @property
    def min_time(self) -> float:
        return 0.05 if self.quick else 0.2

    def model_config(self, preset: str) -> tuple[ModelConfig, int, int]:
        p = PRESETS[preset]
        cfg = ModelConfig(
            vocab_size=self.vocab_size,
            **{k: p[k] for k in ("embed_size", "hidden_size", "num_layers", "dropout")},
        )
        return cfg, p["batch_size"], p["bptt"]

    def rates(self, preset: str, precision: str) -> dict[str, float]:
        """GFLOP/s of each of the preset's matmul shapes in `precision`, measured once a run."""
        if (preset, precision) not in self.measured:
            cfg, batch, bptt = self.model_config(preset)
            self.measured[preset, precision] = {
                name: matmul_gflops(m, k, n, precision, self.device, self.min_time)
                for name, (m, k, n, _) in model_shapes(cfg, batch, bptt).items()
            }
        return self.measured[preset, precision]


def section_limits(ctx: DeviceBench, report: BenchReport) -> None:
    """Matmul GFLOP/s at each preset's shapes in each precision, and memory read GB/s."""
    ctx.say(f"measuring the limits of {ctx.device}")
    for preset in ctx.presets:
        cfg, batch, bptt = ctx.model_config(preset)
        for precision in device_precisions(ctx.device):
            rates = ctx.rates(preset, precision)
            for name, (m, k, n, _) in model_shapes(cfg, batch, bptt).items():
                report.add(
                    "limits",
                    f"{preset}: {precision} matmul {m}x{k} @ {k}x{n} ({name})",
                    rates[name],
                    "GFLOP/s",
                )
    report.add("limits", "memory read", read_gbytes(ctx.device, ctx.min_time), "GB/s")


def trainer_chars_per_s(ctx: DeviceBench, preset: str, precision: str, steps: int) -> float:
    """charlstm's own training loop on real data on the device (data, step, logging): the
    median of its per-step rates after the first step."""
    from charlstm.training.trainer import train

    run = ctx.work / f"train-{preset}-{precision}"
    result = train(
        ctx.data_dir,
        run,
        preset=preset,
        steps=steps,
        eval_every=10**9,
        log_every=1,
        force=True,
        device=str(ctx.device),
        warmup_steps=0,
        precision=precision,
        threads=torch.get_num_threads(),  # the figure of this count, not of a thread trial
    )
    if result.interrupted:  # Ctrl-C or SIGTERM stopped the run: it stops the bench too
        raise KeyboardInterrupt
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    rates = [r["chars_per_s"] for r in records if r["kind"] == "train"][1:]
    return float(np.median(rates))


#: training steps timed per preset on a GPU (milliseconds a step; cuDNN's first steps are slow)
GPU_TRAIN_STEPS = {"tiny": 30, "small": 30, "medium": 20, "large": 12}
CPU_TRAIN_STEPS = 6


def section_train(ctx: DeviceBench, report: BenchReport) -> None:
    """The whole training loop's chars/s per preset and precision, as a share of the matmul
    rate at its own shapes in that precision (target >= TRAIN_TARGET); on CUDA the rates are
    recorded for `--precision auto`, and the row `auto` says what it now picks."""
    for preset in ctx.presets:
        cfg, batch, bptt = ctx.model_config(preset)
        fwd, _ = lstm_flops_per_char(cfg)
        measured = {}
        for precision in device_precisions(ctx.device):
            ctx.say(f"training speed, preset {preset}, {precision}")
            steps = GPU_TRAIN_STEPS[preset] if ctx.device.type == "cuda" else CPU_TRAIN_STEPS
            cps = trainer_chars_per_s(ctx, preset, precision, 3 if ctx.quick else steps)
            floor = floor_seconds_per_char(cfg, batch, bptt, ctx.rates(preset, precision))
            measured[precision] = cps
            report.add(
                "train",
                f"{preset}: {precision} chars/s (whole loop)",
                cps,
                "chars/s",
                note=f"{3 * fwd * cps / 1e9:.0f} GFLOP/s counted; vs every matmul at the "
                f"{precision} rate measured at its shape (target >= {TRAIN_TARGET:.0%})",
                ratio=cps * floor,
                target=TRAIN_TARGET,
            )
        if ctx.device.type == "cuda":
            record_cuda_rates(torch.cuda.get_device_name(ctx.device), cfg.hidden_size, measured)
            picked = cuda_precision(ctx.device, "auto", cfg.hidden_size)
            report.add(
                "train",
                f"{preset}: --precision auto picks {picked}",
                measured[picked],
                "chars/s",
                note="from these figures (recorded in the cache for later runs)",
            )


def sample_chars_per_s(model, batch: int, length: int, device: torch.device) -> float:
    """Sampling with carried state (`FastLSTMStep`, the sampler's own step), `batch` streams."""
    from charlstm.generation.sampling import FastLSTMStep

    step = FastLSTMStep(model, batch)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    for _ in range(10):
        step(tokens)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(length):
        logits = step(tokens)
        tokens = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
    synchronize(device)
    return batch * length / (time.perf_counter() - start)


def section_sample(ctx: DeviceBench, report: BenchReport) -> None:
    """Batch 1 against the bound of reading every weight once per character at the memory
    read bandwidth (target >= SAMPLE_TARGET), and batch 32, at the first preset's size (small
    on a GPU)."""
    from charlstm.model.network import CharLSTM

    preset = ctx.presets[0]
    ctx.say(f"sampling speed, preset {preset}")
    cfg, _, _ = ctx.model_config(preset)
    model = CharLSTM(cfg).to(ctx.device).eval()
    weight_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if "embedding" not in n)
    gbytes = read_gbytes(ctx.device, ctx.min_time)
    bound = gbytes * 1e9 / weight_bytes
    length = 200 if ctx.quick else 3000
    one = sample_chars_per_s(model, 1, length, ctx.device)
    report.add(
        "sample",
        f"{preset}: batch 1 chars/s",
        one,
        "chars/s",
        note=f"bound {bound:,.0f} chars/s = {gbytes:.0f} GB/s memory read / "
        f"{weight_bytes / 1e6:.1f} MB of weights (target >= {SAMPLE_TARGET:.0%})",
        ratio=one / bound,
        target=SAMPLE_TARGET,
    )
    many = sample_chars_per_s(model, 32, length // 4, ctx.device)
    report.add(
        "sample",
        f"{preset}: batch 32 chars/s",
        many,
        "chars/s",
        note="vs batch 1",
        ratio=many / one,
    )


SECTIONS: dict[str, Callable[[DeviceBench, BenchReport], None]] = {
    "limits": section_limits,
    "train": section_train,
    "sample": section_sample,
}


def run_device_bench(
    device: str,
    *,
    presets: list[str] | None = None,
    workdir: str | Path | None = None,
    quick: bool = False,
    sections: set[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the chosen sections (default: all) on `device`; presets default to the GPU ones
    (small, medium, large) on CUDA and to tiny elsewhere."""
    from charlstm.benchmark.scratch import disk_needed, work_folder
    from charlstm.data.corpus import bundled_corpus
    from charlstm.data.dataset import load_dataset
    from charlstm.data.prepare import tokenize
    from charlstm.errors import OptionError

    unknown = set(sections or ()) - set(SECTIONS)
    if unknown:
        raise OptionError(
            f"unknown --section {', '.join(sorted(unknown))} with --device",
            f"use {', '.join(SECTIONS)}",
        )
    dev = resolve_device(device)
    default = ["small", "medium", "large"] if dev.type == "cuda" else ["tiny"]
    presets = presets or default
    with work_folder(workdir, disk_needed(0, presets, {"train"})) as work:
        # tiny shakespeare; quick, its first 100,000 characters (the runs' validation is seconds)
        data_dir = work / ("tinyshakespeare-quick" if quick else "tinyshakespeare")
        if not (data_dir / "meta.json").exists():
            source = None
            if quick:
                source = work / "tinyshakespeare-quick.txt"
                source.write_text(bundled_corpus().read_text(encoding="utf-8")[:100_000])
            tokenize(source, data_dir, force=True)
        ctx = DeviceBench(
            device=dev,
            work=work,
            data_dir=data_dir,
            vocab_size=load_dataset(data_dir).vocab.size,
            presets=presets,
            quick=quick,
            say=progress or (lambda _msg: None),
        )
        report = BenchReport()
        report.machine = device_facts(dev)
        for name, section in SECTIONS.items():
            if sections is None or name in sections:
                section(ctx, report)
    return report


def device_facts(device: torch.device) -> dict:
    """What the figures were measured on."""
    import os

    facts = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 1e9, 1),
            capability=f"{props.major}.{props.minor}",
            cuda_version=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            precisions=device_precisions(device),
        )
    return facts
