"""A time budget kept honestly. The run's clock counts everything after start-up (the data is
ready): `--preset auto`'s measuring, building the model, the steps, every validation, checkpoint
and curves drawing, and the final validation and save. So the loop stops early enough for the
final validation and save to end inside the budget, reckoned from the slowest validation the run
has timed so far; and the validations fall at fixed fifths of the session's share of the budget
(1/5 .. 4/5, then the final one at its end), never two at one step. Each validation may take
at most `VALIDATION_SHARE` of the budget: one too short for the whole val split (a busy
machine, a tiny budget) validates on the split's first characters, timed before the first
step, and says so.

A `BudgetPlan` is plain arithmetic on run-clock seconds, so tests drive it with a fake clock."""

from __future__ import annotations

#: a budgeted run with `--eval-every auto` validates this many times: at 1/5 .. 4/5 of the
#: session's budget, and once at its end
BUDGET_VALIDATIONS = 5
#: the final validation and save are reckoned this much slower than the slowest one timed (a
#: shared machine varies; ending a little early costs less than ending late)
RESERVE_MARGIN = 1.2
#: the most one validation may take, as a share of the session's budget (five take at most a
#: fifth); a budget too short for the whole val split validates on its first characters
VALIDATION_SHARE = 0.04
#: how fast the estimate of a step's time follows the latest steps
STEP_SMOOTHING = 0.3


class BudgetPlan:
    """When a budgeted session validates and when it stops training, on the run's clock
    (seconds of the whole run, earlier sessions included): this session trains from
    `start_s` and must be done, final validation and save included, by `end_s`."""

    def __init__(
        self, start_s: float, end_s: float, validations: int | None = BUDGET_VALIDATIONS
    ) -> None:
        self.start_s, self.end_s = start_s, end_s
        share = end_s - start_s
        count = validations or 0
        self.by_marks = count > 0  # periodic validations come from the marks, not a cadence
        #: run-clock seconds at which a periodic validation falls due (None: not by the plan)
        self.marks = [start_s + share * k / count for k in range(1, count)]
        self.finish_s = 0.0  # the slowest validation + save timed so far
        self.step_s = 0.0  # a step's time, smoothed

    @property
    def validation_allowance_s(self) -> float:
        return VALIDATION_SHARE * (self.end_s - self.start_s)

    def validation_chars(self, seconds_per_char: float, split_chars: int) -> int | None:
        """How many val characters each validation may score, at `seconds_per_char`; None:
        the whole split fits in `validation_allowance_s`."""
        if seconds_per_char * split_chars <= self.validation_allowance_s:
            return None
        return max(2, int(self.validation_allowance_s / max(seconds_per_char, 1e-12) + 1e-9))

    def note_step(self, seconds: float) -> None:
        """A training step took `seconds` (not counting validation or saving)."""
        if self.step_s == 0.0:
            self.step_s = seconds
        else:
            self.step_s += STEP_SMOOTHING * (seconds - self.step_s)

    def note_validation(self, seconds: float) -> None:
        """A validation with its save (and curves) took `seconds`."""
        self.finish_s = max(self.finish_s, seconds)

    @property
    def reserve_s(self) -> float:
        """What the end of the run still needs after the last step: the final validation and
        save, with a margin."""
        return self.finish_s * RESERVE_MARGIN

    @property
    def train_end_s(self) -> float:
        """The run-clock time by which the last step must have ended."""
        return self.end_s - self.reserve_s

    def should_stop(self, elapsed_s: float) -> bool:
        """Whether another step would end past `train_end_s`."""
        return elapsed_s + self.step_s >= self.train_end_s

    def validation_due(self, elapsed_s: float) -> bool:
        """Whether a periodic validation falls due now (marks that passed during one long step
        give one validation, not several); never when training is about to stop, since the
        final validation follows at once."""
        if not self.marks or elapsed_s < self.marks[0]:
            return False
        while self.marks and elapsed_s >= self.marks[0]:
            self.marks.pop(0)
        return not self.should_stop(elapsed_s)

    def progress(self, elapsed_s: float) -> float:
        """The fraction of the training time gone (for the learning-rate schedule): 1 at the
        last step, so the cosine ends at its minimum."""
        return min(1.0, max(0.0, elapsed_s / max(self.train_end_s, 1e-9)))
