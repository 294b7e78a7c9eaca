"""native.py: the C cell kernels build with the system compiler (or report why not), leave
the process's float modes alone, and compute what the ATen-op path of the layer computes."""

from __future__ import annotations

import pytest
import torch

from charlstm.model import lstm_bf16, native
from charlstm.model.lstm_bf16 import lstm_layer_bf16

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


def needs_kernels():
    if native.cell_kernels() is None:
        pytest.skip(f"the C cell kernels do not build here: {native.unavailable_reason}")


@pytest.mark.parametrize("n", [1, 2, 3, 2047, 2048, 2049, 300_001])
def test_native_dropout_is_dropout(n):
    """Every element is reached (odd sizes, partial blocks); a dropped one is 0, a kept one
    x / (1 - p); the backward applies the forward's mask, regenerated from the same seed."""
    needs_kernels()
    torch.manual_seed(0)
    x = (torch.rand(n) + 0.5).requires_grad_()
    assert torch.equal(lstm_bf16.NativeDropout.apply(x, 0.0), x.detach())
    p = 0.3
    y = lstm_bf16.NativeDropout.apply(x, p)
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] / (1 - p))
    g = torch.randn(n)
    y.backward(g)
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], g[kept] / (1 - p))
    if n > 100_000:  # the drop rate, within 5 standard deviations
        rate = 1 - kept.float().mean().item()
        assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_native_dropout_masks_follow_torch_s_seed_not_the_thread_count():
    """Reproducible like F.dropout (torch.manual_seed, saved RNG states), the same mask on 1
    or 2 threads, a fresh mask each call, and no correlation between neighbours."""
    needs_kernels()
    x = torch.ones(1 << 20)
    torch.manual_seed(7)
    a = lstm_bf16.dropout(x, 0.5)
    b = lstm_bf16.dropout(x, 0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(7)
        assert torch.equal(lstm_bf16.dropout(x, 0.5), a)
    finally:
        torch.set_num_threads(threads)
    assert not torch.equal(a, b)
    m = (a > 0).float()
    for lag in (1, 1024, 2048):
        corr = torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1].item()
        assert abs(corr) < 0.01, lag


def test_bf16_training_draws_its_dropout_masks_in_c(monkeypatch):
    """The bf16 kernel's model routes plain dropout through the C kernel (locked dropout and
    the fp32 path keep torch's masks)."""
    needs_kernels()
    calls = []
    real = lstm_bf16.NativeDropout.apply
    monkeypatch.setattr(lstm_bf16.NativeDropout, "apply", lambda *a: calls.append(1) or real(*a))
    from charlstm.config import ModelConfig
    from charlstm.model.network import CharLSTM

    model = CharLSTM(ModelConfig(vocab_size=11, embed_size=8, hidden_size=16, num_layers=2,
                                 dropout=0.2))  # fmt: skip
    model.train()
    tokens = torch.randint(0, 11, (6, 3))
    model(tokens)
    assert not calls  # fp32 kernel: torch's dropout inside nn.LSTM
    model.lstm_kernel = "bf16"
    logits, _ = model(tokens)
    logits.sum().backward()
    assert len(calls) == 3  # input, between the layers, output
