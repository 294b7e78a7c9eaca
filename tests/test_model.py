"""model.py: shapes, initialisation, weight tying, and where truncated BPTT
stops the gradient."""

from __future__ import annotations

import pytest
import torch

from charlstm.config import ModelConfig
from charlstm.model.network import CharLSTM, repackage_state

V, E, H = 11, 8, 16


def make_model(**overrides) -> CharLSTM:
    torch.manual_seed(0)
    config = dict(vocab_size=V, embed_size=E, hidden_size=H, num_layers=2, dropout=0.0)
    return CharLSTM(ModelConfig(**{**config, **overrides}))


def tokens(t: int, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (t, b), generator=torch.Generator().manual_seed(seed))


# -- shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 3])
def test_forward_shapes_time_major(layers):
    model = make_model(num_layers=layers)
    logits, (h, c) = model(tokens(7, 5))
    assert logits.shape == (7, 5, V)
    assert h.shape == c.shape == (layers, 5, H)


def test_init_state_is_zero_with_the_model_dtype():
    model = make_model()
    h, c = model.init_state(4)
    assert h.shape == c.shape == (2, 4, H)
    assert h.dtype == c.dtype == torch.float32
    assert not h.any() and not c.any()


def test_no_state_is_the_zero_state():
    model = make_model().eval()
    x = tokens(6, 3)
    implicit, _ = model(x)
    explicit, _ = model(x, model.init_state(3))
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)


def test_forward_in_pieces_equals_forward_at_once():
    """Carrying (h, c) from one call to the next is the same function as one long call."""
    model = make_model().eval()
    x = tokens(12, 2)
    whole, state_whole = model(x)
    first, state = model(x[:5])
    second, state = model(x[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(state, state_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- initialisation ------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2])
def test_forget_gate_bias_starts_at_one(layers):
    model = make_model(num_layers=layers)
    for k in range(layers):
        b_ih = getattr(model.lstm, f"bias_ih_l{k}").detach()
        b_hh = getattr(model.lstm, f"bias_hh_l{k}").detach()
        assert torch.equal(b_ih[H : 2 * H], torch.ones(H))  # forget gate: rows H:2H
        assert not b_ih[:H].any() and not b_ih[2 * H :].any()  # input, candidate, output
        assert not b_hh.any()
        # so the effective forget-gate bias the cell sees is exactly 1
        assert torch.equal((b_ih + b_hh)[H : 2 * H], torch.ones(H))


def test_head_starts_at_zero_bias_and_embedding_at_unit_scale():
    torch.manual_seed(0)
    model = CharLSTM(ModelConfig(vocab_size=64, embed_size=32, hidden_size=H))
    assert not model.head.bias.detach().any()
    assert 0.9 < model.embedding.weight.detach().std().item() < 1.1
    assert 0.8 * H**-0.5 < model.head.weight.detach().std().item() < 1.2 * H**-0.5


def test_tied_embedding_starts_small():
    """A tied embedding is also the output layer, so it starts at +-0.1, not unit scale."""
    model = make_model(embed_size=H, tie_weights=True)
    assert model.embedding.weight.detach().abs().max() <= 0.1
    assert not model.head.bias.detach().any()


def test_init_is_seeded():
    a, b = make_model(), make_model()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


# -- weight tying --------------------------------------------------------------------------------
def test_tie_weights_shares_one_tensor():
    model = make_model(embed_size=H, tie_weights=True)
    assert model.head.weight is model.embedding.weight
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    untied = make_model(embed_size=H)
    assert model.num_parameters() == untied.num_parameters() - V * H
    # a gradient through the head lands in the shared tensor
    logits, _ = model(tokens(3, 2))
    logits.sum().backward()
    assert model.embedding.weight.grad is not None
    with torch.no_grad():
        model.head.weight[0, 0] = 42.0
    assert model.embedding.weight[0, 0].item() == 42.0


# -- configurations ------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.99])
def test_dropout_inside_zero_one_is_accepted(dropout):
    assert make_model(dropout=dropout).config.dropout == dropout


# -- truncated BPTT ------------------------------------------------------------------------------
def test_repackage_state_detaches_and_keeps_values():
    model = make_model()
    _, state = model(tokens(5, 3))
    assert all(s.requires_grad and s.grad_fn is not None for s in state)
    detached = repackage_state(state)
    for old, new in zip(state, detached, strict=True):
        assert not new.requires_grad
        assert new.grad_fn is None
        assert torch.equal(new, old.detach())
    # the values are carried, not reset
    assert detached[0].abs().sum() > 0


def _two_windows(model: CharLSTM, carry):
    """Run window 1 with its embedding output made observable, carry its state through `carry`,
    and backprop window 2's loss. Returns window 1's embedding output (with .grad)."""
    x1, x2 = tokens(6, 2, seed=1), tokens(6, 2, seed=2)
    targets = tokens(6, 2, seed=3)
    emb1 = model.embedding(x1)
    emb1.retain_grad()
    _, state = model.lstm(emb1)
    logits2, _ = model(x2, carry(state))
    loss2 = torch.nn.functional.cross_entropy(logits2.reshape(-1, V), targets.reshape(-1))
    loss2.backward()
    return emb1, loss2


def test_gradient_stops_at_the_window_boundary():
    model = make_model()
    emb1, _ = _two_windows(model, repackage_state)
    assert emb1.grad is None  # nothing from window 2's loss reached window 1
    # ... while window 2's own computation did receive gradient
    assert model.lstm.weight_hh_l0.grad is not None
    assert model.lstm.weight_hh_l0.grad.abs().sum() > 0


def test_without_repackaging_the_gradient_would_cross_the_boundary():
    """The control for the test above: the check can see a leak when there is one."""
    model = make_model()
    emb1, _ = _two_windows(model, lambda state: state)
    assert emb1.grad is not None
    assert emb1.grad.abs().sum() > 0


def test_window_two_gradient_depends_only_on_the_carried_values():
    """With a detached state, window 2's gradient equals the gradient from a fresh constant
    state with the same values: window 1 contributes its information, not its history."""
    carried = make_model()
    _two_windows(carried, repackage_state)

    fresh = make_model()
    x1, x2 = tokens(6, 2, seed=1), tokens(6, 2, seed=2)
    targets = tokens(6, 2, seed=3)
    with torch.no_grad():
        _, state = fresh(x1)
    constant = tuple(s.clone() for s in state)
    logits2, _ = fresh(x2, constant)
    torch.nn.functional.cross_entropy(logits2.reshape(-1, V), targets.reshape(-1)).backward()

    for (name, a), (_, b) in zip(carried.named_parameters(), fresh.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


# -- AWD-LSTM regularisers -----------------------------------------------------------------------
def test_the_layer_by_layer_path_is_nn_lstm_when_nothing_is_dropped():
    model = make_model(locked_dropout=True)  # dropout 0: the same function, one layer at a time
    x, state = tokens(9, 4), (torch.randn(2, 4, H), torch.randn(2, 4, H))
    model.train()
    a, (ha, ca) = model(x, state)
    model.eval()
    b, (hb, cb) = model(x, state)
    assert torch.equal(a, b) and torch.equal(ha, hb) and torch.equal(ca, cb)


def test_locked_dropout_shares_one_mask_over_time():
    model = make_model(dropout=0.5, locked_dropout=True).train()
    dropped = model._dropout(torch.ones(6, 3, 10))
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # the same at every step
    assert (dropped == 0).any() and (dropped == 2.0).any()
    plain = make_model(dropout=0.5).train()._dropout(torch.ones(6, 3, 10))
    assert not torch.equal(plain, plain[:1].expand_as(plain))


def test_weight_drop_masks_the_recurrent_weights_in_training_only():
    model = make_model(weight_drop=0.5, num_layers=1).train()
    logits, _ = model(tokens(12, 5))
    logits.square().sum().backward()
    zero_hh = (model.lstm.weight_hh_l0.grad == 0).float().mean().item()
    zero_ih = (model.lstm.weight_ih_l0.grad == 0).float().mean().item()
    assert 0.35 < zero_hh < 0.65 and zero_ih < 0.05  # DropConnect on W_hh alone
    model.eval()
    first, _ = model(tokens(12, 5))
    assert torch.equal(first, model(tokens(12, 5))[0])  # deterministic in evaluation
    assert set(model.state_dict()) == set(make_model(num_layers=1).state_dict())
