"""Continuous cache: the model's prediction mixed with a memory of its recent hidden states.

Grave, Joulin & Usunier, "Improving Neural Language Models with a Continuous Cache" (ICLR
2017). The text is read as one stream (batch 1, state carried, as the static reference). The
last layer's output h_t, which has read characters 0..t and predicts t+1, is kept with the
character that followed it. Character t+1 is then predicted by

    p(c) = (1 - lambda) * p_model(c | h_t) + lambda * p_cache(c),
    p_cache(c) ∝ sum over i in [t - window, t), x_{i+1} = c  of  exp(theta * h_t · h_i)

so a character that followed states like the present one in the last `window` positions gets
extra probability. Only earlier positions enter the cache (their next character is already
known), so every character is still predicted before it is seen; the first character, with
an empty cache, is the model's alone. Nothing is trained: `window`, `theta` and `lambda` were
tuned on tiny shakespeare's val split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from charlstm.config import option
from charlstm.errors import OptionError

if TYPE_CHECKING:
    import numpy as np

CACHE_CHUNK = 256  # positions scored together (one matrix product against the cache)


@dataclass(frozen=True)
class CacheSettings:
    """Hyperparameters of the continuous cache (defaults tuned on tiny shakespeare's val)."""

    window: int = option(2000, "How many earlier positions it holds.", flag="--cache-window")
    theta: float = option(0.3, "Sharpness of the hidden-state match.", flag="--cache-theta")
    lam: float = option(0.2, "Weight of the cache in the mixture.", flag="--cache-lambda")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise OptionError(f"--cache-window must be >= 1, got {self.window}")
        if not (isinstance(self.theta, (int, float)) and math.isfinite(self.theta)):
            raise OptionError(f"--cache-theta must be a finite number, got {self.theta}")
        if self.theta <= 0:
            raise OptionError(f"--cache-theta must be > 0, got {self.theta}")
        if not (isinstance(self.lam, (int, float)) and 0 <= self.lam < 1):
            raise OptionError(f"--cache-lambda must be in [0, 1), got {self.lam}")


def cache_position_nats(model, ids: np.ndarray, settings: CacheSettings, device=None):
    """-log p(ids[t+1]) under the cache mixture for every t (a float64 numpy array of
    len(ids) - 1), reading `ids` as one stream."""
    import numpy as np
    import torch

    device = device or next(model.parameters()).device
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    n = len(tokens) - 1
    out = np.zeros(max(n, 0), dtype=np.float64)
    hidden = model.config.hidden_size
    keys = torch.zeros(0, hidden, device=device)  # h_i of the cached positions
    key_next = torch.zeros(0, dtype=torch.long, device=device)  # x_{i+1}
    was_training = model.training
    model.eval()
    state = model.init_state(1, device=device, dtype=torch.float32)
    with torch.no_grad():
        for lo in range(0, n, CACHE_CHUNK):
            hi = min(n, lo + CACHE_CHUNK)
            h, state = model.lstm(model.embedding(tokens[lo:hi, None]), state)
            h = h[:, 0].float()
            p_model = torch.softmax(model.head(h).float(), -1)
            targets = tokens[lo + 1 : hi + 1]
            all_keys = torch.cat([keys, h])
            all_next = torch.cat([key_next, targets])
            first = lo - len(keys)  # position of all_keys[0]
            query_pos = torch.arange(lo, hi, device=device)[:, None]
            key_pos = torch.arange(first, hi, device=device)[None, :]
            usable = (key_pos < query_pos) & (key_pos >= query_pos - settings.window)
            scores = (settings.theta * (h @ all_keys.T)).masked_fill(~usable, -math.inf)
            weights = torch.softmax(scores, 1).nan_to_num(0.0)  # an empty cache: all zero
            p_cache = torch.zeros_like(p_model)
            p_cache.scatter_add_(1, all_next[None, :].expand(hi - lo, -1), weights)
            lam = settings.lam * usable.any(1, keepdim=True).float()
            p = (1 - lam) * p_model + lam * p_cache
            nats = -p.gather(1, targets[:, None])[:, 0].double().log()
            out[lo:hi] = nats.cpu().numpy()
            keys = all_keys[-settings.window :]
            key_next = all_next[-settings.window :]
    model.train(was_training)
    return out


def cache_nats(model, ids: np.ndarray, settings: CacheSettings, device=None) -> tuple[float, int]:
    """Sum of -log p over `ids` with the continuous cache, and how many."""
    nats = cache_position_nats(model, ids, settings, device)
    return float(nats.sum()), len(nats)
