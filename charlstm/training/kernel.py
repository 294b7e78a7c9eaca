"""`--precision auto` on a CPU: the bf16 LSTM kernel or fp32, chosen by timing both here.

Whether bf16 pays depends on the CPU, not on its flags: the same avx512_bf16 flag comes with
bf16 matmuls 2-4x faster than fp32 on one Xeon and 0.5-0.8x on another (issue 36), so a flag
cannot decide. A few real training steps of the run's own shape are timed with each kernel,
taking turns (a neighbour's burst lands on both), in seconds; the figures are filed in the
cache folder under this machine's key (CPU model, torch version, kernel source hash) and the
shape, so later runs of that shape on this machine choose at once (`runtime.read_cpu_rates`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from charlstm.config import TrainConfig
from charlstm.runtime import (
    BF16_MIN_HIDDEN,
    choose_cpu_kernel,
    has_bf16_units,
    lstm_kernel,
    read_cpu_rates,
    record_cpu_rates,
    shape_key,
)

KERNELS = ("fp32", "bf16")
#: timed steps per kernel (after one warm-up each); the fastest of them counts
ROUNDS = 2


@dataclass(frozen=True)
class KernelChoice:
    """The LSTM kernel a CPU run trains with, and why."""

    kernel: str  # "bf16" or "fp32"
    how: str  # "asked", "measured", "cached", "no bf16 units", "not a CPU"
    rates: dict[str, float] = field(default_factory=dict)  # chars/s by kernel, when timed

    def describe(self) -> str:
        """'auto, measured: bf16 12,530 vs fp32 8,079 chars/s' (for the run's header)."""
        if not self.rates:
            return self.how
        figures = " vs ".join(f"{k} {self.rates[k]:,.0f}" for k in KERNELS if k in self.rates)
        return f"auto, {self.how}: {figures} chars/s"


#: what the header says of --precision bf16 on a CPU without bf16 units
NO_BF16_UNITS = (
    "this CPU has no bf16 units (avx512_bf16, AMX): bf16 is emulated, many times slower than "
    "--precision fp32 (or auto)"
)

Measure = Callable[[TrainConfig, int, torch.device], dict[str, float]]


def time_kernels(cfg: TrainConfig, vocab_size: int, device: torch.device) -> dict[str, float]:
    """Training chars/s of `cfg`'s shape with each kernel: one warm-up step each, then
    ROUNDS steps each, taking turns; the fastest step of each counts (a shared machine only
    ever slows a step down)."""
    from charlstm.training.build import build_model, build_optimizer
    from charlstm.training.step import probe_step

    sides = {}
    for kernel in KERNELS:
        model = build_model(cfg.model_config(vocab_size), kernel, device)
        model.train()
        state = model.init_state(cfg.batch_size, device, torch.float32)
        sides[kernel] = [model, build_optimizer(model, cfg, device), state]
    window = torch.randint(0, vocab_size, (cfg.bptt + 1, cfg.batch_size), device=device)

    def step(kernel: str) -> float:
        model, optimizer, state = sides[kernel]
        start = time.perf_counter()
        sides[kernel][2] = probe_step(model, optimizer, window, state, cfg.clip)
        return time.perf_counter() - start

    for kernel in KERNELS:
        step(kernel)  # warm-up: allocation, weight packing, the C kernels' first load
    best = {k: math.inf for k in KERNELS}
    for _ in range(ROUNDS):
        for kernel in KERNELS:
            best[kernel] = min(best[kernel], step(kernel))
    return {k: cfg.batch_size * cfg.bptt / s for k, s in best.items()}


def choose_kernel(
    cfg: TrainConfig,
    vocab_size: int,
    device: torch.device,
    *,
    measure: Measure | None = None,
    may_measure: bool = True,
) -> KernelChoice:
    """The kernel `cfg` trains with on `device`: as asked; for `--precision auto` on a CPU with
    bf16 units, from this machine's figures for the shape, timed now (`time_kernels`, or
    `measure`) and filed when there are none; a model narrower than BF16_MIN_HIDDEN without
    figures trains in fp32 untimed (`runtime.BF16_MIN_HIDDEN`: its GEMMs are too small for
    their bf16 rate to pay for the window kernel's per-step work; no start-up cost for it).
    `may_measure=False` (under torchrun) uses the figures if filed, else
    `runtime.lstm_kernel`'s rule without them."""
    if device.type != "cpu":
        return KernelChoice("fp32", "not a CPU")
    if cfg.precision != "auto":
        kernel = lstm_kernel(device, cfg.precision, cfg.hidden_size)
        if kernel == "bf16" and not has_bf16_units():  # said in the run's header
            return KernelChoice(kernel, f"asked, but {NO_BF16_UNITS}")
        return KernelChoice(kernel, "asked")
    if not has_bf16_units():
        return KernelChoice("fp32", "no bf16 units")
    shape = shape_key(cfg.num_layers, cfg.hidden_size, cfg.embed_size, cfg.batch_size, cfg.bptt)
    filed = read_cpu_rates(shape)
    if filed is not None:
        rates = {k: float(filed[k]) for k in KERNELS}
        return KernelChoice(choose_cpu_kernel(rates), "cached", rates)
    if cfg.hidden_size < BF16_MIN_HIDDEN:  # known without timing: per-step work dominates
        return KernelChoice("fp32", f"auto: narrower than {BF16_MIN_HIDDEN}")
    if not may_measure:
        return KernelChoice(lstm_kernel(device, "auto", cfg.hidden_size), "not measured")
    rates = (measure or time_kernels)(cfg, vocab_size, device)
    record_cpu_rates(shape, rates, torch.get_num_threads())
    return KernelChoice(choose_cpu_kernel(rates), "measured", rates)
