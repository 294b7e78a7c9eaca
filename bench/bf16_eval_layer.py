"""Forward-only (evaluation-shaped) speed of one LSTM layer: nn.LSTM fp32 against the bf16
window with the C cell (issue #15 item 4). `python bench/bf16_eval_layer.py`."""

import time

import torch

from charlstm.model.lstm_bf16 import NativeBF16LSTMWindow
from charlstm.runtime import keep_freed_memory

keep_freed_memory()
steps, streams, inputs, hidden = 256, 64, 512, 512
lstm = torch.nn.LSTM(inputs, hidden)
weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
x = torch.randn(steps, streams, inputs)
h0, c0 = torch.zeros(streams, hidden), torch.zeros(streams, hidden)


def best_seconds(fn, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


with torch.no_grad():
    fp32 = best_seconds(lambda: lstm(x, (h0[None], c0[None])))
    bf16 = best_seconds(lambda: NativeBF16LSTMWindow.apply(x, h0, c0, *weights))
print(
    f"one layer forward, {steps} steps x {streams} streams, H {hidden}: "
    f"nn.LSTM fp32 {fp32 * 1e3:.1f} ms, bf16 C cell {bf16 * 1e3:.1f} ms, {fp32 / bf16:.2f}x"
)
