"""`--ema D`: an exponential moving average of the weights, kept beside the trained ones.

After every optimizer step each averaged tensor moves towards its parameter:
``avg <- avg + (1 - d_n) * (param - avg)``, with ``d_n = min(D, (1 + n) / (10 + n))`` at the
n-th update (n from 0). The warm-up factor is the one of TensorFlow's ExponentialMovingAverage
with ``num_updates``: early on the average reaches back about n / 9 steps (it starts as the
initial weights, and with a plain ``D`` = 0.999 they would still weigh e^-3 = 5% of the average
after 3,000 steps), and only after 10 / (1 - D) steps does the window settle at 1 / (1 - D). In
a run shorter than that the average therefore covers roughly its last tenth.

The average is what validation measures and what a checkpoint's `model` holds (so `eval`,
`sample` and `export` use it with no change); the trained weights go into the checkpoint's run
state, so `--resume` continues both exactly. Under DDP every rank holds identical parameters,
hence an identical average: no communication is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """The EMA of a model's parameters (each shared tensor once, in `named_parameters` order)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.names, self.params = zip(*model.named_parameters(), strict=True)
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average (after an optimizer step): a single fused lerp over every
        tensor."""
        torch._foreach_lerp_(self.average, list(self.params), 1.0 - self.current_decay())
        self.updates += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside: the model's parameters hold the average; on leaving, the trained weights are
        put back bit for bit (copied, not swapped, so optimizer and DDP keep their tensors)."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(list(self.params), self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(self.params), trained)

    def model_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`model.state_dict()` with the average in place of every parameter (on the CPU):
        what a checkpoint's `model` holds."""
        by_id = {id(p): a for p, a in zip(self.params, self.average, strict=True)}
        weights = model.state_dict(keep_vars=True)
        return {k: by_id.get(id(v), v).detach().cpu() for k, v in weights.items()}

    @torch.no_grad()
    def load_state_dict(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """The average from a checkpoint's weights (a full model state dict; shared tensors
        appear under each of their names and are read once)."""
        for name, t in zip(self.names, self.average, strict=True):
            t.copy_(weights[name])
        self.updates = updates
