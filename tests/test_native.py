"""native.py: the C cell kernels build with the system compiler (or report why not), leave
the process's float modes alone, and compute what the ATen-op path of the layer computes."""

from __future__ import annotations

import pytest
import torch

from charlstm import lstm_bf16, native
from charlstm.lstm_bf16 import lstm_layer_bf16

BF16_REL = 0.02


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_native_and_aten_paths_agree_within_bf16_rounding(monkeypatch):
    """The two implementations of the layer compute the same function: what differs is the
    order of fp32 sums, exp's last bits and so where bf16 roundings of h and dG fall."""
    if native.cell_kernels() is None:
        pytest.skip(f"the C cell kernels do not build here: {native.unavailable_reason}")
    torch.manual_seed(3)
    T, B, inputs, H = 12, 5, 7, 70  # H not a multiple of the kernel's 64-column blocks
    lstm = torch.nn.LSTM(inputs, H)
    weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    x = torch.randn(T, B, inputs, requires_grad=True)
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    results = []
    for path in ("native", "aten"):
        if path == "aten":
            monkeypatch.setattr(lstm_bf16, "cell_kernels", lambda: None)
        for p in [x, *weights]:
            p.grad = None
        y, h, c = lstm_layer_bf16(x, h0, c0, *weights)
        (y.square().sum() + h.sum() + c.sum()).backward()
        results.append([y, h, c, x.grad] + [p.grad for p in weights])
    for mine, ref in zip(*results, strict=True):
        assert rel_err(mine.detach(), ref.detach()) < BF16_REL


def test_kernels_build_with_the_compiler_and_leave_float_modes_alone(monkeypatch, tmp_path):
    """A failed build is a reason, not an error (the layer falls back); a good one does not
    switch the process to flush-to-zero (gcc < 13 links that in with -ffast-math)."""
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("CHARLSTM_CACHE", str(tmp_path))
    native.cell_kernels.cache_clear()
    try:
        monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
        monkeypatch.setattr(native.shutil, "which", lambda name: "/bin/false" if name else None)
        assert native.cell_kernels() is None
        assert native.unavailable_reason
        monkeypatch.undo()
        monkeypatch.setenv("CHARLSTM_CACHE", str(tmp_path))
        native.cell_kernels.cache_clear()
        assert native.cell_kernels() is not None
        assert list((tmp_path / "kernels").glob("lstm_cell-*.so"))
        tiny = torch.tensor([1e-38], dtype=torch.float32)
        assert float(tiny * 1e-3) > 0.0  # a subnormal result survives
    finally:
        native.cell_kernels.cache_clear()


def test_charlstm_native_0_turns_the_kernels_off(monkeypatch):
    """The documented switch: the layer then runs its ATen-op path."""
    monkeypatch.setenv("CHARLSTM_NATIVE", "0")
    native.cell_kernels.cache_clear()
    try:
        assert native.cell_kernels() is None
        assert native.unavailable_reason == "CHARLSTM_NATIVE=0"
        x = torch.randn(3, 2, 4)
        lstm = torch.nn.LSTM(4, 8)
        weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        y, _, _ = lstm_bf16.lstm_layer_bf16(x, torch.zeros(2, 8), torch.zeros(2, 8), *weights)
        assert y.shape == (3, 2, 8)
    finally:
        monkeypatch.undo()
        native.cell_kernels.cache_clear()
