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
"""

from __future__ import annotations

import torch
from torch import nn

from charlstm.config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]


class CharLSTM(nn.Module):
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
        x = self.drop(self.embedding(tokens))
        out, state = self.lstm(x, state)
        return self.head(self.drop(out)), state


def repackage_state(state: State) -> State:
    """Detach the carried state: keep its values (information flows on), drop its history
    (gradients stop at the window boundary)."""
    return (state[0].detach(), state[1].detach())
