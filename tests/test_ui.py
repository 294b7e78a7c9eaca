"""ui.py: what a person reads — progress lines that read like the bar, the run header, and no
escape codes where they do not belong (NO_COLOR, logs, pipes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from charlstm.cli.ui import fmt_duration, plain_progress_line, run_header, step_numbers
from charlstm.config import ModelConfig
from charlstm.training.progress import EvalStats, RunInfo, StepStats


def stats(**overrides) -> StepStats:
    values = dict(step=120, total_steps=500, elapsed_s=65.0, budget_s=None, train_loss=1.2345,
                  val_loss=1.5, lr=2.9e-3, chars_per_s=12345.6, skipped=0, eta_s=200.0)  # fmt: skip
    return StepStats(**{**values, **overrides})


def test_a_step_bounded_log_line_reads_like_the_bar():
    line = plain_progress_line(stats())
    assert line.startswith("step 120/500 (24%)  1m05s  ETA 3m20s  loss 1.234  val 1.500")
    assert "bpc 2.164" in line and "lr 2.90e-03" in line and "12,346 chars/s" in line


def test_a_time_budgeted_log_line_shows_minutes_of_the_budget():
    line = plain_progress_line(stats(total_steps=None, budget_s=600.0, elapsed_s=78.0, eta_s=522))
    assert line.startswith("1.3/10.0 min  step 120  1m18s  ETA 8m42s")
    assert "minutes 0." not in line


def test_missing_numbers_are_dashes_and_skips_are_counted():
    text = step_numbers(stats(val_loss=None, train_loss=float("nan"), skipped=3))
    assert "loss -" in text and "val -" in text and "bpc -" in text and "skipped 3" in text


def test_durations():
    assert [fmt_duration(s) for s in (5.04, 65, 3725)] == ["5.0 s", "1m05s", "1h02m"]


def test_run_header():
    info = RunInfo(
        run_dir=Path("runs/a"), data="data/mine", train_chars=900, val_chars=100, vocab_size=20,
        model=ModelConfig(vocab_size=20, embed_size=8, hidden_size=16, num_layers=2),
        params=1234, batch_size=4, bptt=16, lr=3e-3, processes=2, device="cpu",
        precision="fp32", compiled=False, total_steps=None, budget_min=10.0, resumed_at=300,
    )  # fmt: skip
    rows = run_header(info)
    assert rows["length"] == "10 min budget (resumed at step 300)"
    assert rows["batch"] == "4 streams x bptt 16, lr 0.003, 2 processes"
    assert rows["model"].startswith("2 x LSTM(16), embed 8")


def _render(env_extra: dict) -> str:
    code = (
        "from charlstm.cli import ui\n"
        "ui.show_table('title', {'key': 'value'})\n"
        "ui.error('something failed')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, **env_extra}, check=True)  # fmt: skip
    return proc.stderr


def test_no_color_means_no_escape_codes_at_all():
    """Rich alone drops colours under NO_COLOR but keeps bold and italic."""
    assert "\x1b[" in _render({"FORCE_COLOR": "1"})  # a terminal gets styles...
    plain = _render({"FORCE_COLOR": "1", "NO_COLOR": "1"})  # ...unless NO_COLOR is set
    assert "\x1b[" not in plain and "error: something failed" in plain
    assert "\x1b[" not in _render({})  # and a pipe never gets them


def test_the_auto_choice_table_names_the_choice_its_reason_and_the_users_options(capsys):
    import torch

    from charlstm.cli.ui import TrainProgress, auto_choice_lines, auto_choice_table
    from charlstm.training.autopreset import choose, parameter_count

    def measure(cfg, vocab_size, device, world_size=1):
        return 4e10 / parameter_count(cfg.num_layers, cfg.hidden_size, cfg.embed_size, 65, False)

    given = {"time_budget_min": 60, "bptt": 64}
    choice = choose(given, 10**6, 65, torch.device("cpu"), measure=measure)
    lines = auto_choice_lines(choice)
    assert lines[0].startswith(f"chosen: 2 x LSTM({choice.config.hidden_size})")
    assert "bptt 64" in lines[0]
    assert lines[1].startswith("why: ") and "assumed, not measured" in lines[1]
    assert lines[2] == "yours, kept over auto's: --bptt 64"
    table = auto_choice_table(choice)
    assert [c.header for c in table.columns][:3] == ["shape", "params", "chars/s"]
    assert table.row_count == len(choice.rows)
    TrainProgress(quiet=True).auto_chosen(choice)
    assert capsys.readouterr().err == ""


def test_a_budget_no_shape_fits_is_a_warning_before_training_with_the_budget_that_would(capsys):
    """The issue's quick start: 2x384 at 864 chars/s for 5 minutes, 0.12 characters per
    parameter. The warning comes with the table (and through --quiet), naming the minutes at
    which the smallest shape would see 1.5."""
    import torch

    from charlstm.cli.ui import TrainProgress
    from charlstm.training.autopreset import MIN_CHARS_PER_PARAM, OVERHEAD, choose

    choice = choose({"time_budget_min": 5}, 10**6, 65, torch.device("cpu"),
                    measure=lambda cfg, vocab_size, device, world_size=1: 864.0)  # fmt: skip
    row = choice.rows[choice.chosen]
    assert row.name == "2x384" and not row.fits
    TrainProgress(quiet=True).auto_chosen(choice)
    (line,) = capsys.readouterr().err.splitlines()
    need = (MIN_CHARS_PER_PARAM * row.params / 864 / (1 - OVERHEAD) + choice.measure_s) / 60
    assert line.startswith("warning: no model shape trains well in 5 min here: the smallest, ")
    assert f"{row.chars_per_param:.2f} characters per parameter at the 864 chars/s" in line
    assert f"give --time-budget {math.ceil(need)} or more" in line


def _info(**overrides) -> RunInfo:
    values = dict(
        run_dir=Path("runs/a"), data="data/mine", train_chars=900, val_chars=100, vocab_size=20,
        model=ModelConfig(vocab_size=20, embed_size=8, hidden_size=16, num_layers=2),
        params=1234, batch_size=4, bptt=16, lr=3e-3, processes=1, device="cpu",
        precision="fp32", compiled=False, total_steps=None, budget_min=10.0, resumed_at=None,
        elapsed_s=12.0,
    )  # fmt: skip
    return RunInfo(**{**values, **overrides})


def test_off_a_terminal_a_plain_line_comes_every_10_s_through_slow_steps_and_validation(capsys):
    """The heartbeat (its thread calls `heartbeat()` every second; here a fake clock does):
    one line per 10 s however long a step or a validation takes, its clock moved on from the
    last report, and what the run is doing since."""
    from charlstm.cli.ui import TrainProgress

    now = [100.0]
    progress = TrainProgress(clock=lambda: now[0])
    progress._info, progress._last_line, progress._stats_at = _info(), now[0], now[0]
    lines: list[str] = []

    def beat(at: float) -> None:
        now[0] = at
        progress.heartbeat()
        lines.extend(capsys.readouterr().err.splitlines())

    beat(105.0)
    assert lines == []  # not 10 s yet
    beat(110.0)  # before any step: the budget's clock and what it is doing
    assert lines == ["0.4/10.0 min  step 0  22.0 s  starting"]
    now[0] = 111.0
    progress.step(stats(total_steps=None, budget_s=600.0, elapsed_s=23.0, eta_s=577.0))
    progress.validating(120)
    beat(115.0)
    beat(121.0)  # one line, 10 s after the last, the clock moved on 10 s from the report
    assert len(lines) == 2
    assert lines[1].startswith("0.6/10.0 min  step 120  33.0 s  ETA 9m27s  loss 1.234")
    assert lines[1].endswith("(validating at step 120)")
    progress.evaluated(EvalStats(step=125, val_loss=1.4, improved=True, streams=4))
    beat(131.0)
    assert lines[2].startswith("step 125: val loss 1.4000")  # the validation's own line
    beat(141.5)  # the step the last report named, numbers from the last logged step
    assert len(lines) == 5 and lines[4].startswith("0.9/10.0 min  step 125  53.5 s")
    progress.close()


def test_the_heartbeat_covers_the_time_before_training_starts(capsys):
    """`--preset auto`'s measuring comes before the run header: a line says it is preparing."""
    from charlstm.cli.ui import TrainProgress

    now = [50.0]
    progress = TrainProgress(clock=lambda: now[0])
    now[0] = 61.0
    progress.heartbeat()
    assert capsys.readouterr().err.splitlines() == ["11.0 s  preparing the run"]


def test_a_quiet_run_has_no_heartbeat(capsys):
    from charlstm.cli.ui import TrainProgress

    now = [0.0]
    progress = TrainProgress(quiet=True, clock=lambda: now[0])
    progress.start(_info())
    now[0] = 60.0
    progress.heartbeat()
    progress.close()
    assert progress._thread is None and capsys.readouterr().err == ""
