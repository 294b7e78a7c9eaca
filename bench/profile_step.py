"""Where a `small` training step goes, by part (torch.profiler, self CPU time, default threads):
`python bench/profile_step.py bf16` or `... fp32`."""

import collections
import sys
import time

# isort: off
import charlstm  # noqa: F401  (first: OpenMP threads then sleep at barriers; torch loads after)

# isort: on
import torch
import torch.nn.functional as F
from torch.profiler import profile

from charlstm.config import TrainConfig
from charlstm.model.network import CharLSTM, repackage_state
from charlstm.runtime import keep_freed_memory
from charlstm.training.build import build_optimizer

keep_freed_memory()
cfg = TrainConfig()  # small
m = CharLSTM(cfg.model_config(65))
m.lstm_kernel = sys.argv[1] if len(sys.argv) > 1 else "bf16"
m.train()
opt = build_optimizer(m, cfg, torch.device("cpu"))
st = m.init_state(32)
w = torch.randint(0, 65, (129, 32))


def step():
    global st
    lo, st = m(w[:-1], st)
    loss = F.cross_entropy(lo.reshape(-1, 65), w[1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    st = repackage_state(st)


for _ in range(3):
    step()
t0 = time.perf_counter()
[step() for _ in range(5)]
per = (time.perf_counter() - t0) / 5
print(f"{m.lstm_kernel}: {per * 1e3:.0f} ms/step = {4096 / per:,.0f} chars/s")
with profile() as p:
    for _ in range(3):
        step()
groups = collections.Counter()
total = 0
for e in p.key_averages():
    t = e.self_cpu_time_total
    total += t
    n = e.key
    if n == "mkldnn::_linear_pointwise":
        g = "recurrent GEMMs (per step, fwd+bwd)"
    elif n in ("aten::mm", "aten::addmm"):
        g = "window GEMMs (input proj, dW_ih, dW_hh, dX, head)"
    elif "BF16LSTMWindow" in n:
        g = "bf16 window: C cell kernels + Python per-step loop"
    elif "mkldnn_rnn" in n or "lstm" in n.lower():
        g = "nn.LSTM fused kernel"
    elif "adam" in n.lower() or "foreach" in n or "norm" in n:
        g = "optimizer + clipping"
    elif "dropout" in n or "bernoulli" in n or n in ("aten::mul", "aten::div_", "aten::mul_"):
        g = "dropouts (masks, multiplies)"
    elif "embedding" in n or "cross_entropy" in n or "log_softmax" in n or "nll" in n:
        g = "embedding, softmax, loss"
    elif n in (
        "aten::copy_",
        "aten::_to_copy",
        "aten::to",
        "aten::clone",
        "aten::add",
        "aten::add_",
        "aten::zeros",
        "aten::zero_",
        "aten::fill_",
        "aten::empty",
        "aten::cat",
        "aten::stack",
    ):
        g = "casts, copies, allocations"
    else:
        g = "other: " + n
    groups[g] += t
other = sum(v for k, v in groups.items() if k.startswith("other"))
for k, v in groups.most_common():
    if not k.startswith("other") or v / total > 0.01:
        print(f"{100 * v / total:5.1f} %  {k}")
print(f"{100 * other / total:5.1f} %  other (all)")
