"""Forward-only (evaluation-shaped) speed of one LSTM layer: nn.LSTM fp32 against the bf16
window with the C cell (issue #15 item 4). `python bench/bf16_eval_layer.py`."""

import time, torch
from charlstm.lstm_bf16 import NativeBF16LSTMWindow
from charlstm.runtime import keep_freed_memory

keep_freed_memory()
T, B, I, H = 256, 64, 512, 512
lstm = torch.nn.LSTM(I, H)
w = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
x = torch.randn(T, B, I)
h0 = torch.zeros(B, H)
c0 = torch.zeros(B, H)


def tm(f):
    f()
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


with torch.no_grad():
    a = tm(lambda: lstm(x, (h0[None], c0[None])))
    b = tm(lambda: NativeBF16LSTMWindow.apply(x, h0, c0, *w))
print(
    f"one layer forward, T {T} x {B} streams, H {H}: nn.LSTM fp32 {a * 1e3:.1f} ms, bf16 C cell {b * 1e3:.1f} ms, ratio {a / b:.2f}x"
)
