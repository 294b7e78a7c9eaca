"""When things happen in a run: the learning rate at each step (warm-up, then cosine decay over
the run's length), the run's length in steps, and the cadences (every N steps or M minutes) of
logging, validation and checkpoints."""

from __future__ import annotations

import math

from charlstm.config import TrainConfig
from charlstm.training.budget import BUDGET_VALIDATIONS


def lr_at(cfg: TrainConfig, step: int, progress: float, total: int | None = None) -> float:
    """Linear warm-up over `warmup_steps` (at most a tenth of a run of `total` steps), then
    cosine decay to lr * min_lr_ratio as `progress` (fraction of the run done, by steps or by
    time) goes from 0 to 1.

    The schedule is a function of progress through the run's length, so extending a run
    (`--resume --steps` more, or `--time-budget` minutes more) re-lays the cosine over the new
    length: the learning rate continues from where the longer schedule stands at this point
    (a warm restart; warm-up is not repeated past its steps).
    """
    warmup = cfg.warmup_steps if total is None else min(cfg.warmup_steps, total // 10)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def total_steps(cfg: TrainConfig, per_epoch: int) -> int | None:
    """Steps in the run (None: bounded by time); no length given means one epoch."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.time_budget_min is not None:
        return None
    return max(1, math.ceil((cfg.epochs or 1) * per_epoch))


def due(step: int, every_steps: int | None, every_min: float | None, since_s: float) -> bool:
    """Whether a cadence (every N steps, or every M minutes since it last fired) fires now."""
    if every_steps is not None and step % every_steps == 0:
        return True
    return every_min is not None and since_s >= every_min * 60


def planned_evaluations(cfg: TrainConfig, steps_per_s: float, seconds: float) -> int:
    """How many validations a run of `cfg` makes in `seconds` at `steps_per_s`: the periodic
    ones of its cadence and the final one (for the benchmark's overhead figure)."""
    if cfg.time_budget_min is not None and cfg.eval_every == "auto":
        return BUDGET_VALIDATIONS  # at the fifths of the budget (`training.budget`)
    total = total_steps(cfg, 10**9)
    every_steps, every_min = cfg.eval_every_parsed(total)
    count, last = 1, 0.0
    for step in range(1, int(steps_per_s * seconds) + 1):
        now = step / steps_per_s
        if step != total and due(step, every_steps, every_min, now - last):
            count, last = count + 1, now
    return count
