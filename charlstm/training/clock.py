"""The run's clock: wall time across every session of a run (what a time budget counts), the
training speed since the last log line, and the time left. Every timing of a run reads `now()`,
so a test can run the loop on a fake clock."""

from __future__ import annotations

import time


def now() -> float:
    """Seconds on the clock every part of a run reads (monotonic)."""
    return time.perf_counter()


class RunClock:
    """Elapsed time of a run (earlier sessions included), its pace, and its ETA. `start` is
    when this session's share of the budget began (default: now): a new run's clock starts
    once its data is ready, so `--preset auto`'s measuring and building the model count."""

    def __init__(self, prior_s: float, step: int, start: float | None = None) -> None:
        self.start = now() if start is None else start
        self.prior_s = prior_s  # what earlier sessions of the run took
        self.session_start_step = step
        self._mark = (now(), step)  # the last speed reading: (time, step)

    def now(self) -> float:
        return now()

    def elapsed(self) -> float:
        """Seconds of the whole run: earlier sessions and this one."""
        return self.prior_s + now() - self.start

    def since(self, t: float) -> float:
        return now() - t

    def steps_per_s(self, step: int) -> float:
        """Steps a second since the last call (or the session's first step)."""
        current, (then, then_step) = now(), self._mark
        self._mark = (current, step)
        return (step - then_step) / max(current - then, 1e-9)

    def eta(self, step: int, total_steps: int | None, budget_s: float | None) -> float | None:
        """Seconds left: of the budget, or at this session's pace to the last step."""
        if budget_s is not None:
            return max(0.0, budget_s - self.elapsed())
        done = step - self.session_start_step
        if not done or total_steps is None:
            return None
        return (total_steps - step) * (now() - self.start) / done
