"""`CharLSTM`: embedding -> dropout -> multi-layer LSTM -> dropout -> linear head over the vocab.

Each LSTM layer (PyTorch's `nn.LSTM`, so cuDNN on a GPU and oneDNN/MKL on a CPU) computes, for
input x_t and carried state (h_{t-1}, c_{t-1}):

    i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)      input gate
    f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf)      forget gate
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)         candidate cell
    o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho)      output gate
    c_t = f_t * c_{t-1} + i_t * g_t
    h_t = o_t * tanh(c_t)

`weight_ih_l{k}` stacks [W_ii; W_if; W_ig; W_io] (4H x input), `weight_hh_l{k}` the W_h* the same
way, so the forget-gate slice of each bias is rows H:2H. Tensors are time-major: tokens (T, B),
state h and c (num_layers, B, H).

Regularisers of AWD-LSTM (Merity et al. 2018), in training only and keeping the fused kernel:
`weight_drop` is DropConnect on every W_h* (one mask per window, shared by all time steps and
streams), and `locked_dropout` makes every dropout mask one per stream and window, shared over
time (variational dropout, Gal & Ghahramani 2016). Both run the layers one at a time through
the same fused kernel nn.LSTM uses (`torch._VF.lstm`), on nn.LSTM's own parameters, so a
checkpoint does not change and evaluation is the plain nn.LSTM call.

`lstm_kernel = "bf16"` (set by the trainer where bf16 GEMMs win, see `charlstm.model.lstm_bf16`)
runs every layer in training through a hand-written window kernel on CPU tensors instead:
bf16 matrix products, fp32 weights, state and gate arithmetic, the same parameters. Dropout
between layers and DropConnect stay here, outside the layer; the dropout masks then come from
the same C library (a counter-based mask, regenerated in the backward, not stored).
`eval_kernel = "bf16"` (`charlstm eval --precision bf16`) scores with the same kernel, forward
only; by default evaluation keeps nn.LSTM's fp32 kernel and its exact number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlstm.config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]


class CharLSTM(nn.Module):
    """The model a `ModelConfig` describes; `forward(tokens, state)` returns the logits of every
    position and the state to carry into the next window (the gate equations: this module's
    docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.embed_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.lstm_kernel = "fp32"  # or "bf16": not a weight, so checkpoints do not record it
        # forward-only scoring keeps the exact fp32 kernel unless asked (`eval --precision bf16`)
        self.eval_kernel = "fp32"
        if config.tie_weights:
            self.head.weight = self.embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit-scale embeddings, PyTorch's LSTM defaults, and a forget-gate bias of 1.

        Unit-scale inputs let the first steps learn from the characters at once (a +-0.1
        embedding sits ~1.5 minutes on the unigram plateau of tiny shakespeare on 2 CPU
        cores); a tied embedding is also the output layer, so it starts small instead, as in
        word_language_model. A forget bias of 1 (Gers et al. 2000; Jozefowicz et al. 2015)
        starts every cell remembering, so gradients flow through long windows from step one.
        """
        if self.config.tie_weights:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        else:
            nn.init.normal_(self.embedding.weight)
        hidden = self.config.hidden_size
        for name, param in self.lstm.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    param.zero_()
                    param[hidden : 2 * hidden].fill_(1.0)
            elif name.startswith("bias_hh"):
                nn.init.zeros_(param)
        if not self.config.tie_weights:
            nn.init.normal_(self.head.weight, std=hidden**-0.5)
        nn.init.zeros_(self.head.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero (h, c) for `batch_size` streams."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.head.weight.device
        dtype = dtype if dtype is not None else self.head.weight.dtype
        return (
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def forward(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """tokens (T, B) -> logits (T, B, vocab), and the state after the last step."""
        x = self.embedding(tokens)
        cfg = self.config
        # training uses `lstm_kernel`; evaluation `eval_kernel`, fp32 unless asked, so that
        # `eval` and the validation during training give the exact fp32 number by default
        kernel = self.lstm_kernel if self.training else self.eval_kernel
        bf16 = kernel == "bf16" and x.device.type == "cpu"
        if bf16 or (self.training and (cfg.weight_drop > 0 or cfg.locked_dropout)):
            out, state = self._layerwise_lstm(x, state, bf16)
            return self.head(self._dropout(out)), state
        out, state = self.lstm(self.drop(x), state)
        return self.head(self.drop(out)), state

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout in training: a fresh mask per element, or with `locked_dropout` one mask per
        stream shared by every time step of the window."""
        p = self.config.dropout
        if not self.training or p == 0:
            return x
        if not self.config.locked_dropout:
            if self.lstm_kernel == "bf16":  # the C kernel's mask (charlstm.model.lstm_bf16.dropout)
                from charlstm.model.lstm_bf16 import dropout

                return dropout(x, p)
            return F.dropout(x, p, training=True)
        mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - p).div_(1 - p)
        return x * mask

    def _layerwise_lstm(
        self, x: torch.Tensor, state: State | None, bf16: bool = False
    ) -> tuple[torch.Tensor, State]:
        """The LSTM one layer at a time (each layer one fused kernel call, or one bf16 window
        node), with DropConnect on the recurrent weights and our dropout between layers."""
        from charlstm.model import lstm_bf16

        grad = torch.is_grad_enabled()
        bf16_layer = lstm_bf16.training_layer() if grad else lstm_bf16.lstm_layer_bf16_inference

        cfg = self.config
        if state is None:
            state = self.init_state(x.shape[1], x.device, x.dtype)
        x = self._dropout(x)
        hs, cs = [], []
        for k in range(cfg.num_layers):
            w_hh = getattr(self.lstm, f"weight_hh_l{k}")
            if cfg.weight_drop > 0 and self.training:
                w_hh = F.dropout(w_hh, cfg.weight_drop, training=True)
            weights = [
                getattr(self.lstm, f"weight_ih_l{k}"),
                w_hh,
                getattr(self.lstm, f"bias_ih_l{k}"),
                getattr(self.lstm, f"bias_hh_l{k}"),
            ]
            if bf16:
                x, h, c = bf16_layer(x, state[0][k], state[1][k], *weights)
                h, c = h.unsqueeze(0), c.unsqueeze(0)
            else:
                hx = (state[0][k : k + 1], state[1][k : k + 1])
                x, h, c = torch._VF.lstm(x, hx, weights, True, 1, 0.0, True, False, False)
            hs.append(h)
            cs.append(c)
            if k < cfg.num_layers - 1:
                x = self._dropout(x)
        return x, (torch.cat(hs), torch.cat(cs))


def repackage_state(state: State) -> State:
    """Detach the carried state: keep its values (information flows on), drop its history
    (gradients stop at the window boundary)."""
    return (state[0].detach(), state[1].detach())
