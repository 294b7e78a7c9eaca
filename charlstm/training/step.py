"""One optimisation step of truncated BPTT: a window of every stream forward from the carried
state, backward, clip, update; the state carried on, detached. A non-finite loss or gradient
skips the update and leaves the weights as they were (the trainer's NaN guard counts it)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from charlstm.model.network import repackage_state
from charlstm.runtime import autocast
from charlstm.training.distributed import Dist
from charlstm.training.runstate import RunState


def optimizer_step(
    state: RunState, forward_model, window: torch.Tensor, clip: float, amp_dtype, dist: Dist
) -> tuple[float, bool, float]:
    """Train on `window` (T+1 rows of ids, one column per stream of this rank) from
    `state.hidden`. Returns (loss averaged over ranks, whether the update was applied, the
    gradient's norm before clipping)."""
    model, device = state.model, window.device
    with autocast(device, amp_dtype):
        logits, hidden = forward_model(window[:-1], state.hidden)
    loss = _loss(logits, window[1:])
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mean_loss, norm = _clip_and_check(model, loss, clip, dist)
    if not (math.isfinite(mean_loss) and math.isfinite(norm)):
        state.optimizer.zero_grad(set_to_none=True)
        if not all(torch.isfinite(s).all() for s in hidden):
            hidden = model.init_state(hidden[0].shape[1], device, torch.float32)
        state.hidden = repackage_state(hidden)
        return mean_loss, False, norm
    state.optimizer.step()
    if state.ema is not None:
        state.ema.update()
    state.hidden = tuple(s.float() for s in repackage_state(hidden))
    return mean_loss, True, norm


def _clip_and_check(model, loss: torch.Tensor, clip: float, dist: Dist) -> tuple[float, float]:
    """Clip the gradient; the loss and the gradient norm (before clipping) averaged over ranks
    (DDP's gradients are the same on every rank, so is their norm; a non-finite one anywhere
    makes the average non-finite)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    check = dist.all_reduce_sum(torch.stack([loss.detach().float(), grad_norm.detach().float()]))
    return float(check[0]) / dist.world_size, float(check[1]) / dist.world_size


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per character."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def probe_step(model, optimizer, window: torch.Tensor, hidden, clip: float | None, amp_dtype=None):
    """One plain training step on `window` for timing a shape (no NaN guard, no ranks): forward
    under `amp_dtype`'s autocast, loss, backward, clip, update. Returns the carried state,
    detached, in fp32."""
    with autocast(window.device, amp_dtype):
        logits, hidden = model(window[:-1], hidden)
    loss = _loss(logits, window[1:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
    optimizer.step()
    return tuple(s.float() for s in repackage_state(hidden))
