"""lstm_bf16.py: the bf16-GEMM window kernel is nn.LSTM's function, within bf16 tolerance,
forward and backward, on nn.LSTM's own parameters."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from charlstm.config import ModelConfig
from charlstm.model import lstm_bf16, native
from charlstm.model.lstm_bf16 import lstm_layer_bf16
from charlstm.model.network import CharLSTM

# bf16 keeps 8 bits of mantissa: one rounding is 2^-9 relative; a window of GEMMs and
# recurrences compounds a few of them, so "the same function" means ~1 % relative error
BF16_REL = 0.02


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(autouse=True, params=["native", "aten"])
def cell_path(request, monkeypatch):
    """Every test runs on both paths of the layer: the C cell kernels (where this machine can
    build them) and the ATen-op fallback used where it cannot."""
    if request.param == "aten":
        monkeypatch.setattr(lstm_bf16, "cell_kernels", lambda: None)
    elif native.cell_kernels() is None:
        pytest.skip(f"the C cell kernels do not build here: {native.unavailable_reason}")
    return request.param


def test_one_layer_matches_nn_lstm_values_and_gradients():
    torch.manual_seed(0)
    T, B, inputs, H = 9, 4, 6, 16
    lstm = torch.nn.LSTM(inputs, H)
    weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    x = torch.randn(T, B, inputs, requires_grad=True)
    h0, c0 = torch.randn(B, H) * 0.5, torch.randn(B, H) * 0.5
    probes = [torch.randn(T, B, H), torch.randn(B, H), torch.randn(B, H)]
    results = []
    for bf16 in (False, True):
        for p in [x, *weights]:
            p.grad = None
        if bf16:
            y, h, c = lstm_layer_bf16(x, h0, c0, *weights)
        else:
            y, (h, c) = lstm(x, (h0[None], c0[None]))
            h, c = h[0], c[0]
        sum((out * probe).sum() for out, probe in zip((y, h, c), probes, strict=True)).backward()
        results.append([y, h, c, x.grad] + [p.grad for p in weights])
    for mine, ref in zip(results[1], results[0], strict=True):
        assert mine.dtype == torch.float32
        assert rel_err(mine.detach(), ref.detach()) < BF16_REL


def test_gradient_flows_into_h0_and_c0():
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(3, 8)
    weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    x = torch.randn(5, 2, 3)
    grads = []
    for bf16 in (False, True):
        h0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(2)).requires_grad_()
        c0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(3)).requires_grad_()
        if bf16:
            y, _, _ = lstm_layer_bf16(x, h0, c0, *weights)
        else:
            y, _ = lstm(x, (h0[None], c0[None]))
        y.sum().backward()
        grads.append((h0.grad, c0.grad))
    for mine, ref in zip(grads[1], grads[0], strict=True):
        assert rel_err(mine, ref) < BF16_REL


def small_model(**overrides) -> CharLSTM:
    torch.manual_seed(0)
    shape = dict(vocab_size=13, embed_size=8, hidden_size=32, num_layers=2, dropout=0.0)
    return CharLSTM(ModelConfig(**{**shape, **overrides}))


def test_model_gradients_on_a_fixed_batch_match_fp32():
    """The whole model, one fixed batch: every parameter's gradient within bf16 tolerance."""
    tokens = torch.randint(0, 13, (17, 6), generator=torch.Generator().manual_seed(0))
    grads = {}
    for kernel in ("fp32", "bf16"):
        model = small_model()
        model.lstm_kernel = kernel
        logits, _ = model(tokens[:-1])
        F.cross_entropy(logits.reshape(-1, 13), tokens[1:].reshape(-1)).backward()
        grads[kernel] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert grads["bf16"].keys() == grads["fp32"].keys()
    for name, ref in grads["fp32"].items():
        assert rel_err(grads["bf16"][name], ref) < BF16_REL, name


@pytest.mark.parametrize(
    "regulariser", [dict(weight_drop=0.3, dropout=0.0), dict(locked_dropout=True, dropout=0.2)]
)
def test_awd_regularisers_run_through_the_bf16_kernel(regulariser):
    """DropConnect and locked dropout stay outside the layer: with the same masks (same
    seed), the bf16 model is the fp32 one within tolerance, and the weight-dropped W_hh
    still gets its gradient. (Plain dropout draws its masks differently on the two paths,
    see test_native.py, so the DropConnect case runs without it.)"""
    tokens = torch.randint(0, 13, (12, 4), generator=torch.Generator().manual_seed(0))
    out = {}
    for kernel in ("fp32", "bf16"):
        model = small_model(**regulariser)
        model.lstm_kernel = kernel
        torch.manual_seed(5)
        logits, _ = model(tokens[:-1])
        logits.square().mean().backward()
        out[kernel] = (logits.detach(), model.lstm.weight_hh_l1.grad.clone())
    for mine, ref in zip(out["bf16"], out["fp32"], strict=True):
        assert rel_err(mine, ref) < BF16_REL


def test_parameters_and_checkpoint_layout_are_nn_lstm_s():
    model = small_model()
    before = {k: v.shape for k, v in model.state_dict().items()}
    model.lstm_kernel = "bf16"
    assert {k: v.shape for k, v in model.state_dict().items()} == before
    assert "lstm.weight_ih_l0" in before and "lstm.bias_hh_l1" in before


def test_evaluation_stays_on_the_exact_fp32_path():
    """Forward-only evaluation is faster through nn.LSTM's fused kernel, so a model set to the
    bf16 kernel evaluates exactly as before."""
    tokens = torch.randint(0, 13, (20, 3), generator=torch.Generator().manual_seed(4))
    model = small_model().eval()
    ref, ref_state = model(tokens)
    model.lstm_kernel = "bf16"
    mine, state = model(tokens)
    torch.testing.assert_close(mine, ref, rtol=0, atol=0)
    for a, b in zip(state, ref_state, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scoring_layer_is_the_training_kernels_forward(monkeypatch):
    """The forward-only layer of `eval --precision bf16` keeps no buffers for a backward pass
    and projects the input a block of steps at a time, but computes what the training kernel's
    forward does (a block boundary inside the window, and an uneven last block, included)."""
    from charlstm.model.lstm_bf16 import lstm_layer_bf16_inference

    torch.manual_seed(1)
    T, B, inputs, H = 11, 3, 6, 16
    lstm = torch.nn.LSTM(inputs, H)
    weights = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    x, h0, c0 = torch.randn(T, B, inputs), torch.randn(B, H) * 0.5, torch.randn(B, H) * 0.5
    monkeypatch.setattr(lstm_bf16, "INFERENCE_ROWS", 4 * B)  # blocks of 4 steps: 4, 4, 3
    with torch.no_grad():
        ref = lstm_layer_bf16(x, h0, c0, *weights)
        mine = lstm_layer_bf16_inference(x, h0, c0, *weights)
        fp32 = lstm(x, (h0[None], c0[None]))[0]
    for a, b in zip(mine, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert rel_err(mine[0], fp32) < BF16_REL


def test_eval_kernel_bf16_scores_within_bf16_tolerance_and_only_when_asked():
    """`eval_kernel = "bf16"` (eval --precision bf16) runs forward-only scoring through the
    bf16 kernel: logits and state within bf16 tolerance of fp32, and not the same bits (so
    the kernel really ran); training's `lstm_kernel` does not switch it on."""
    tokens = torch.randint(0, 13, (20, 3), generator=torch.Generator().manual_seed(5))
    model = small_model().eval()
    with torch.no_grad():
        ref, ref_state = model(tokens)
        model.eval_kernel = "bf16"
        mine, state = model(tokens)
    assert not torch.equal(mine, ref)
    for a, b in zip((mine, *state), (ref, *ref_state), strict=True):
        assert rel_err(a, b) < BF16_REL


def test_carried_state_across_windows_matches_fp32():
    """Truncated BPTT carries (h, c) from one window into the next: the kernel continues
    from a given state exactly as nn.LSTM does, within bf16 tolerance."""
    tokens = torch.randint(0, 13, (20, 3), generator=torch.Generator().manual_seed(4))
    out = {}
    for kernel in ("fp32", "bf16"):
        model = small_model()
        model.lstm_kernel = kernel
        with torch.no_grad():
            first, state = model(tokens[:8])
            second, state = model(tokens[8:], state)
        out[kernel] = (torch.cat([first, second]), *state)
    for mine, ref in zip(out["bf16"], out["fp32"], strict=True):
        assert rel_err(mine, ref) < BF16_REL


# -- through the trainer ---------------------------------------------------------------------------
def test_bf16_training_learns_is_deterministic_and_its_checkpoint_is_an_fp32_one(tmp_path):
    """`--precision bf16`: the loss falls, a second run with the same seed is the same bit for
    bit (the kernel is deterministic, which resuming exactly relies on), and its checkpoint
    loads and evaluates like any other (on the exact fp32 path)."""
    from tiny import TINY_KWARGS, word_text

    from charlstm.data.prepare import tokenize
    from charlstm.evaluation.scoring import evaluate
    from charlstm.model.checkpoint import load_checkpoint, read_checkpoint
    from charlstm.training.trainer import train

    (tmp_path / "c.txt").write_text(word_text(3000))
    data = tokenize(tmp_path / "c.txt", tmp_path / "tok").out
    tiny = dict(TINY_KWARGS, precision="bf16", log_every=5, eval_every=10**6)
    train(data, tmp_path / "one", steps=30, **tiny)
    lines = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    losses = [r["train_loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.3
    train(data, tmp_path / "two", steps=30, **tiny)
    one, two = (read_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("one", "two"))
    for name, tensor in one.items():
        assert torch.equal(tensor, two[name]), name
    ckpt = load_checkpoint(tmp_path / "one" / "last.pt")
    assert ckpt.model.lstm_kernel == "fp32"
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0"} <= set(one)
    assert evaluate(ckpt, data=data).loss < losses[0]


def test_without_a_onednn_bf16_linear_the_step_product_is_torch_mm(monkeypatch):
    """A CPU without oneDNN's bf16 linear (an AVX2-only EPYC: its weight reorder raises) takes
    torch.mm for the recurrent product, with the same numbers as the packed path."""
    torch.manual_seed(0)
    weight, x = torch.randn(64, 32).bfloat16(), torch.randn(4, 32).bfloat16()
    fast = lstm_bf16.onednn_bf16_linear()
    monkeypatch.setattr(lstm_bf16, "onednn_bf16_linear", lambda: False)
    linear, packed = lstm_bf16._packed_linear(weight, 4)
    assert packed is weight
    plain = linear(x, packed)
    torch.testing.assert_close(plain, x @ weight.t())
    if fast:  # and the oneDNN path, where this CPU has it, agrees within bf16 rounding
        monkeypatch.undo()
        linear, packed = lstm_bf16._packed_linear(weight, 4)
        torch.testing.assert_close(linear(x, packed).float(), plain.float(), rtol=2e-2, atol=2e-2)
