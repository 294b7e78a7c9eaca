"""An honest --time-budget, on a fake clock: the run ends inside its budget with everything
counted (steps, validations, saves), validates at the fifths of the budget and once at the end,
never twice at one step. The clock advances only when a step, a validation or a save "takes"
time, so each schedule is exact and no test depends on the machine's speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import TINY_TRAINING, tokenized_words

import charlstm.training.clock
from charlstm.training.budget import BUDGET_VALIDATIONS, RESERVE_MARGIN, BudgetPlan
from charlstm.training.trainer import Trainer, train
from charlstm.training.validation import Validator

TINY = TINY_TRAINING


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tokenized_words(tmp_path_factory.mktemp("data"))


class FakeClock:
    """Seconds that pass only when the trainer steps (`step_s`, or `step_s(step)`), validates
    (`validate_s`) or saves last.pt (`save_s`)."""

    def __init__(self, monkeypatch, step_s: float, validate_s: float, save_s: float = 0.0):
        self.t = 1000.0
        self.step_s, self.validate_s, self.save_s = step_s, validate_s, save_s
        monkeypatch.setattr(charlstm.training.clock, "now", lambda: self.t)
        real_step, real_losses, real_save = Trainer.train_step, Validator.run_losses, Trainer.save

        def step(trainer):
            steps = trainer.state.step + 1
            self.t += self.step_s(steps) if callable(self.step_s) else self.step_s
            return real_step(trainer)

        def losses(validator, state):
            self.t += self.validate_s
            return real_losses(validator, state)

        def save(trainer):
            self.t += self.save_s
            return real_save(trainer)

        monkeypatch.setattr(Trainer, "train_step", step)
        monkeypatch.setattr(Validator, "run_losses", losses)
        monkeypatch.setattr(Trainer, "save", save)


def evals(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def test_a_budget_validates_five_times_at_its_fifths_and_ends_inside_it(
    data, tmp_path, monkeypatch
):
    FakeClock(monkeypatch, step_s=0.5, validate_s=2.0, save_s=0.2)
    result = train(data, tmp_path / "run", time_budget_min=1, **TINY)
    records = evals(tmp_path / "run")
    assert len(records) == BUDGET_VALIDATIONS
    steps = [r["step"] for r in records]
    assert len(set(steps)) == len(steps) and steps == sorted(steps)
    # each periodic one right after its mark (12, 24, 36, 48 s), then the final one at the end
    started = [r["elapsed_s"] - 2.0 for r in records[:-1]]
    for mark, at in zip((12, 24, 36, 48), started, strict=True):
        assert mark <= at < mark + 0.5
    assert records[-1]["step"] == result.steps
    assert result.elapsed_s <= 60.0
    # and it used the budget: it stopped no earlier than one step and the reserve allow
    assert result.elapsed_s >= 60.0 - 0.5 - RESERVE_MARGIN * 2.2 - 0.5


def test_a_validation_slower_than_a_fifth_still_ends_inside_the_budget(data, tmp_path, monkeypatch):
    """Slow validations (15 s of a 60 s budget): fewer fit, none twice at a step, and the end
    (final validation included) is still inside the budget."""
    FakeClock(monkeypatch, step_s=1.0, validate_s=15.0, save_s=1.0)
    result = train(data, tmp_path / "run", time_budget_min=1, **TINY)
    steps = [r["step"] for r in evals(tmp_path / "run")]
    assert len(set(steps)) == len(steps) >= 2
    assert steps[-1] == result.steps
    assert result.elapsed_s <= 60.0


def test_minutes_more_on_resume_are_minutes_more(data, tmp_path, monkeypatch):
    """`--resume --time-budget 1` after a 1-minute run: the second session ends inside the
    second minute, with its own five validations."""
    FakeClock(monkeypatch, step_s=0.5, validate_s=2.0, save_s=0.2)
    first = train(data, tmp_path / "run", time_budget_min=1, **TINY)
    again = train(data, tmp_path / "run", resume=True, time_budget_min=1)
    assert first.elapsed_s <= 60.0 and 60.0 < again.elapsed_s <= first.elapsed_s + 60.0
    second = [r for r in evals(tmp_path / "run") if r["step"] > first.steps]
    assert len(second) == BUDGET_VALIDATIONS
    steps = [r["step"] for r in evals(tmp_path / "run")]
    assert len(set(steps)) == len(steps)


def test_a_step_cadence_in_a_budget_never_validates_the_last_step_twice(
    data, tmp_path, monkeypatch
):
    FakeClock(monkeypatch, step_s=1.0, validate_s=1.0)
    result = train(data, tmp_path / "run", time_budget_min=0.5, **{**TINY, "eval_every": "4"})
    steps = [r["step"] for r in evals(tmp_path / "run")]
    assert len(set(steps)) == len(steps)
    assert steps[-1] == result.steps and result.elapsed_s <= 30.0


def test_a_step_longer_than_the_budget_still_trains_one_step(data, tmp_path, monkeypatch):
    """The one overrun a budget allows: a run trains at least one step."""
    FakeClock(monkeypatch, step_s=90.0, validate_s=1.0)
    result = train(data, tmp_path / "run", time_budget_min=1, **TINY)
    assert result.steps == 1 and [r["step"] for r in evals(tmp_path / "run")] == [1]


# -- the plan's arithmetic -----------------------------------------------------------------------
def test_the_plan_reserves_the_slowest_validation_and_a_step():
    plan = BudgetPlan(0.0, 100.0)
    assert plan.marks == [20.0, 40.0, 60.0, 80.0]
    plan.note_step(1.0)
    plan.note_validation(5.0)
    plan.note_validation(3.0)
    assert plan.reserve_s == pytest.approx(5.0 * RESERVE_MARGIN)
    assert not plan.should_stop(100.0 - 6.0 - 1.0 - 0.01)
    assert plan.should_stop(100.0 - 6.0 - 1.0)
    assert plan.progress(plan.train_end_s) == 1.0


def test_marks_passed_in_one_long_step_give_one_validation():
    plan = BudgetPlan(0.0, 100.0)
    assert not plan.validation_due(19.9)
    assert plan.validation_due(45.0)  # 20 and 40 both passed
    assert plan.marks == [60.0, 80.0]
    assert not plan.validation_due(50.0)


def test_no_periodic_validation_just_before_the_end():
    """A mark that falls where training is about to stop is left to the final validation."""
    plan = BudgetPlan(0.0, 100.0)
    plan.note_step(1.0)
    plan.note_validation(25.0)
    assert not plan.validation_due(80.0)  # 80 + 1 >= 100 - 30


def test_a_resumed_session_plans_its_own_share():
    plan = BudgetPlan(60.0, 120.0)
    assert plan.marks == [72.0, 84.0, 96.0, 108.0]
    assert BudgetPlan(0.0, 10.0, validations=None).marks == []


class Messages:
    """A reporter that keeps the messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def __getattr__(self, name):  # start, step, evaluated, ...: nothing to keep
        return lambda *args, **kwargs: None


def test_a_budget_too_short_for_the_val_split_validates_on_its_first_chars(
    data, tmp_path, monkeypatch
):
    """Validation timed at 50 ms a char: the 300-char split would take 15 s, more than the
    2.4 s (4 % of a minute) one validation may take, so every validation scores the first 48
    characters, and one line says so with the figures and where the whole score comes from."""
    FakeClock(monkeypatch, step_s=0.5, validate_s=2.0)
    monkeypatch.setattr(Validator, "seconds_per_char", lambda self, model: 0.05)
    seen = Messages()
    result = train(data, tmp_path / "run", time_budget_min=1, reporter=seen, **TINY)
    records = evals(tmp_path / "run")
    assert records and {r["val_chars"] for r in records} == {48}
    (line,) = [m for m in seen.messages if m.startswith("validating on")]
    assert "the first 48 of the 300 val chars" in line and "~15 s here" in line
    assert f"charlstm eval {tmp_path / 'run' / 'best.pt'} scores them all" in line
    assert result.elapsed_s <= 60.0


def test_a_budget_with_time_for_the_whole_split_scores_all_of_it(data, tmp_path, monkeypatch):
    FakeClock(monkeypatch, step_s=0.5, validate_s=2.0)
    monkeypatch.setattr(Validator, "seconds_per_char", lambda self, model: 0.001)
    train(data, tmp_path / "run", time_budget_min=1, **TINY)
    assert {r["val_chars"] for r in evals(tmp_path / "run")} == {300}
