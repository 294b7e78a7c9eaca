"""The run's clock: wall time across every session of a run (what a time budget counts), the
training speed since the last log line, and the time left."""

from __future__ import annotations

import time


class RunClock:
    """Elapsed time of a run (earlier sessions included), its pace, and its ETA."""

    def __init__(self, prior_s: float, step: int) -> None:
        self.start = time.perf_counter()
        self.prior_s = prior_s  # what earlier sessions of the run took
        self.session_start_step = step
        self._mark = (self.start, step)  # the last speed reading: (time, step)

    def elapsed(self) -> float:
        """Seconds of the whole run: earlier sessions and this one."""
        return self.prior_s + time.perf_counter() - self.start

    def since(self, t: float) -> float:
        return time.perf_counter() - t

    def steps_per_s(self, step: int) -> float:
        """Steps a second since the last call (or the session's start)."""
        now, (then, then_step) = time.perf_counter(), self._mark
        self._mark = (now, step)
        return (step - then_step) / max(now - then, 1e-9)

    def eta(self, step: int, total_steps: int | None, budget_s: float | None) -> float | None:
        """Seconds left: of the budget, or at this session's pace to the last step."""
        if budget_s is not None:
            return max(0.0, budget_s - self.elapsed())
        done = step - self.session_start_step
        if not done or total_steps is None:
            return None
        return (total_steps - step) * (time.perf_counter() - self.start) / done
