"""Why the bf16 LSTM kernel wins or loses against fp32 on this CPU, part by part.

    python bench/bf16_vs_fp32.py            # ~1 min on 2 cores

1. The GEMMs of a `small` training window (2x512, 32 streams x 128 steps) in fp32 and bf16,
   each as the bf16 kernel calls it (plain `torch.mm` for the window-wide ones, oneDNN's
   prepacked `_linear_pointwise` for the per-step recurrent one) and the other way, at all
   threads and at 1: GFLOP/s and bf16/fp32.
2. A whole training step with each kernel (`torch.profiler`, self CPU time by part): how much
   of the bf16 step is GEMMs and how much the per-step work around them (the C cell kernels,
   the Python loop), against nn.LSTM's fused fp32 kernel.
3. The break-even: with the bf16 step's non-GEMM time fixed, how much faster than fp32 the
   bf16 GEMMs must run for the bf16 kernel to win. A CPU whose bf16 GEMMs are slower than
   that (issue 36's Xeon measured 0.52-0.76x) trains faster in fp32, which is what the measured
   `--precision auto` then picks.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

# isort: off
import charlstm  # noqa: F401  (first: OpenMP threads then sleep at barriers; torch loads after)

# isort: on
import torch
import torch.nn.functional as F
from torch.profiler import profile

from charlstm.config import TrainConfig
from charlstm.model.network import CharLSTM, repackage_state
from charlstm.runtime import cpu_model, keep_freed_memory
from charlstm.training.build import build_optimizer

B, T, H, E, V = 32, 128, 512, 128, 65


def seconds(fn, min_time: float = 0.3) -> float:
    """The fastest of three timings of `fn` (each at least `min_time` in all)."""
    fn()
    best = float("inf")
    for _ in range(3):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            if time.perf_counter() - start >= min_time:
                break
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def gemm_table() -> dict[str, float]:
    """bf16/fp32 of each GEMM shape of the window, the way the bf16 kernel calls it."""
    mk = torch.ops.mkldnn
    shapes = {  # name: (m, k, n), packed: whether the kernel calls oneDNN's prepacked linear
        "input projection, x @ W_ih^T (T*B x 512 x 2048)": ((T * B, H, 4 * H), False),
        "recurrent step, h @ W_hh^T (B x 512 x 2048)": ((B, H, 4 * H), True),
        "weight gradient, dG^T @ h (2048 x T*B x 512)": ((4 * H, T * B, H), False),
    }
    ratios = {}
    for name, ((m, k, n), packed) in shapes.items():
        rates = {}
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
            if packed:
                w = mk._reorder_linear_weight(b, m)
                s = seconds(lambda a=a, w=w: mk._linear_pointwise(a, w, None, "none", [], ""))
            else:
                bt = b.t().contiguous()
                s = seconds(lambda a=a, bt=bt: torch.mm(a, bt))
            rates[dtype] = 2 * m * k * n / s / 1e9
        ratios[name] = rates[torch.bfloat16] / rates[torch.float32]
        print(f"  {name}: fp32 {rates[torch.float32]:6.1f}  bf16 {rates[torch.bfloat16]:6.1f} "
              f"GFLOP/s  bf16/fp32 {ratios[name]:.2f}x", flush=True)  # fmt: skip
    return ratios


def step_parts(kernel: str) -> tuple[float, dict[str, float]]:
    """(seconds per training step, {part: share of self CPU time}) for `kernel`."""
    cfg = TrainConfig()
    model = CharLSTM(cfg.model_config(V))
    model.lstm_kernel = kernel
    model.train()
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    state = [model.init_state(B)]
    w = torch.randint(0, V, (T + 1, B))

    def step():
        logits, st = model(w[:-1], state[0])
        loss = F.cross_entropy(logits.reshape(-1, V), w[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state[0] = repackage_state(st)

    per = seconds(step, min_time=1.0)
    with profile() as p:
        for _ in range(2):
            step()
    parts: collections.Counter = collections.Counter()
    for e in p.key_averages():
        n = e.key
        if n in ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm"):
            part = "GEMMs"
        elif "BF16LSTMWindow" in n:
            part = "bf16 window: C cell kernels + Python per-step loop"
        elif "mkldnn_rnn" in n or "lstm" in n.lower():
            part = "nn.LSTM fused kernel (GEMMs and cells)"
        else:
            part = "everything else (optimizer, dropout, loss, copies)"
        parts[part] += e.self_cpu_time_total
    total = sum(parts.values())
    return per, {k: v / total for k, v in parts.most_common()}


def main() -> None:
    keep_freed_memory()
    all_threads = torch.get_num_threads()
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; load {load}")
    for threads in sorted({all_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        print(f"\n{threads} thread(s): GEMMs of a small window")
        ratios = gemm_table()
        steps = {}
        for kernel in ("fp32", "bf16"):
            per, parts = step_parts(kernel)
            steps[kernel] = (per, parts)
            print(f"  {kernel} step: {per * 1e3:.0f} ms = {B * T / per:,.0f} chars/s; "
                  + "; ".join(f"{k} {100 * v:.0f} %" for k, v in parts.items()))  # fmt: skip
        t32, (t16, parts16) = steps["fp32"][0], steps["bf16"]
        gemm16 = t16 * parts16.get("GEMMs", 0.0)
        rest16 = t16 - gemm16
        # the window's GEMM time is dominated by the per-step recurrent ones (2 x 128 a layer)
        s_here = ratios["recurrent step, h @ W_hh^T (B x 512 x 2048)"]
        gemm32 = gemm16 * s_here  # what the same GEMMs take in fp32 here
        need = gemm32 / max(t32 - rest16, 1e-9) if t32 > rest16 else float("inf")
        print(f"  bf16/fp32 step speed {t32 / t16:.2f}x; bf16 step = GEMMs {gemm16 * 1e3:.0f} ms "
              f"+ the rest {rest16 * 1e3:.0f} ms; fp32 step {t32 * 1e3:.0f} ms")  # fmt: skip
        print(f"  break-even: the bf16 kernel beats fp32 only where its GEMMs run >= "
              f"{need:.2f}x fp32's (here {s_here:.2f}x)")  # fmt: skip
    torch.set_num_threads(all_threads)


if __name__ == "__main__":
    main()
