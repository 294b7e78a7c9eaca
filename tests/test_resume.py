"""Resuming from the run folder alone (charlstm.training.trainer's planning of a resumed run): one
test per kind of difference between what the user types and what the run was — nothing given; the
data moved; preset or model options given again; batch or bptt given differently; a finished
run extended — and the exact continuation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tiny import TINY_KWARGS, InterruptAt, tiny_args, word_text

from charlstm.config import TrainConfig
from charlstm.data.prepare import tokenize
from charlstm.errors import CharLSTMError, OptionError
from charlstm.model.checkpoint import read_checkpoint
from charlstm.training.schedule import lr_at
from charlstm.training.trainer import train

# a non-default preset with non-default sizes: a resume that rebuilt the model from the
# defaults instead of the checkpoint could not load its weights
OPTIONS = dict(**TINY_KWARGS, lr=1e-2, dropout=0.1, eval_every=10, log_every=5, device="cpu")


@pytest.fixture
def data(tmp_path) -> Path:
    (tmp_path / "corpus").mkdir()
    source = tmp_path / "corpus" / "mine.txt"
    source.write_text(word_text(3000), encoding="utf-8")
    return tokenize(source, tmp_path / "data" / "mine").out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["model"]


def assert_same_run(a: Path, b: Path) -> None:
    pa, pb = read_checkpoint(a / "last.pt"), read_checkpoint(b / "last.pt")
    for name, tensor in pa["model"].items():
        assert torch.equal(tensor, pb["model"][name]), name
    for name in ("step", "epoch", "epoch_step", "best_val", "last_val", "skipped_steps"):
        assert pa["run"][name] == pb["run"][name], name
    for sa, sb in zip(pa["run"]["hidden"], pb["run"]["hidden"], strict=True):
        assert torch.equal(sa, sb)
    assert _losses(a) == _losses(b)


def _losses(run: Path) -> list[tuple]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["kind"], r["step"], r.get("train_loss"), r.get("val_loss"))
            for r in map(json.loads, lines)]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_with_nothing_but_the_folder_is_exact(data, tmp_path):
    """`train(out=RUN, resume=True)` and nothing else continues the run: data, preset, model,
    batch, bptt, seed and length all come from last.pt. 40 steps in one go == 20, then the
    same 40-step run resumed from its folder (the schedule is over the same 40 steps)."""
    train(data, tmp_path / "one", steps=40, **OPTIONS)
    stopped = train(data, tmp_path / "two", steps=40, reporter=InterruptAt(20), **OPTIONS)
    assert stopped.interrupted and stopped.steps == 20
    resumed = train(out=tmp_path / "two", resume=True)
    assert resumed.steps == 40 and not resumed.interrupted
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_the_issue_commands_work_as_a_user_types_them(tmp_path, run_cli):
    """The commands of the report that started this: resume with only --out (and --steps),
    and with DATA given again, each continuing the tiny run on its own data."""
    (tmp_path / "my.txt").write_text(word_text(4000, seed=2), encoding="utf-8")
    data, run = tmp_path / "data" / "mine", tmp_path / "runs" / "a"
    assert run_cli("tokenize", tmp_path / "my.txt", "--out", data).exit_code == 0
    first = run_cli("train", data, *tiny_args(), "--out", run, "--steps", "10", "-q")
    assert first.exit_code == 0, first.stderr
    again = run_cli("train", "--out", run, "--resume", "--steps", "20", "-q")
    assert again.exit_code == 0, again.stderr
    assert read_checkpoint(run / "last.pt")["run"]["step"] == 20
    with_data = run_cli("train", data, "--out", run, "--resume", "--steps", "30", "-q")
    assert with_data.exit_code == 0, with_data.stderr
    assert read_checkpoint(run / "last.pt")["run"]["step"] == 30


def test_moved_data_is_named_and_can_be_passed_again(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **OPTIONS)
    moved = tmp_path / "elsewhere"
    shutil.move(data, moved)
    before = snapshot(run)
    with pytest.raises(CharLSTMError, match=f"no longer at {data.resolve()}.*pass DATA"):
        train(out=run, resume=True, steps=20)
    assert snapshot(run) == before
    assert train(moved, run, resume=True, steps=20).steps == 20


def test_preset_and_model_options_given_again_must_match(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **OPTIONS)
    # the same values again are fine (a user re-typing the original command)
    assert train(data, run, resume=True, steps=15, **OPTIONS).steps == 15
    before = snapshot(run)
    for changed, words in (
        ({"preset": "small"}, "--preset"),
        ({"hidden_size": 48}, "cannot change --hidden when resuming (this run has --hidden 32)"),
        ({"dropout": 0.3, "seed": 9}, "cannot change --dropout, --seed"),
        ({"lr": 0.1}, "--lr"),
    ):
        with pytest.raises(OptionError, match=words.replace("(", r"\(").replace(")", r"\)")):
            train(out=run, resume=True, steps=20, **changed)
        assert snapshot(run) == before  # nothing written by a refused resume


@pytest.mark.parametrize("changed", [{"bptt": 8}, {"batch_size": 8}])
def test_batch_or_bptt_given_differently_is_refused_before_any_write(data, tmp_path, changed):
    """A resume with another stream layout once took a step, saved last.pt and crashed; now it
    is refused before anything is written, and a correct resume still matches one go."""
    train(data, tmp_path / "one", steps=20, **OPTIONS)
    run = tmp_path / "run"
    train(data, run, steps=20, reporter=InterruptAt(10), **OPTIONS)
    before = snapshot(run)
    with pytest.raises(OptionError, match="cannot change --b"):
        train(out=run, resume=True, **changed)
    assert snapshot(run) == before
    train(out=run, resume=True)
    assert_same_run(tmp_path / "one", run)


def test_extending_a_finished_run_relays_the_schedule(data, tmp_path):
    """--steps N beyond a finished run's length: the cosine is re-laid over the N steps, so
    the first new step's learning rate is where the longer schedule stands at that step."""
    run = tmp_path / "run"
    train(data, run, steps=20, **OPTIONS)
    old = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train(out=run, resume=True, steps=40)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[: len(old)] == old  # history kept as it was
    cfg = TrainConfig.from_dict(read_checkpoint(run / "last.pt")["train_config"])
    assert cfg.steps == 40
    first_new = next(r for r in records if r["kind"] == "train" and r["step"] == 25)
    # the lr logged at step 25 is that of step index 24 (the step taken just before logging)
    assert first_new["lr"] == pytest.approx(lr_at(cfg, 24, 24 / 40, 40))
    assert first_new["lr"] > old[-2]["lr"]  # a warm restart from the decayed end of the old run
    assert max(r["step"] for r in records) == 40


def test_time_budget_on_resume_means_minutes_more(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **OPTIONS)
    elapsed = read_checkpoint(run / "last.pt")["run"]["elapsed_s"]
    result = train(out=run, resume=True, time_budget_min=0.01)
    payload = read_checkpoint(run / "last.pt")
    assert payload["train_config"]["steps"] is None
    assert payload["train_config"]["time_budget_min"] == pytest.approx(elapsed / 60 + 0.01)
    # its clock carries on from the first session's (where it stops: tests/test_budget.py)
    assert result.steps > 10 and payload["run"]["elapsed_s"] > elapsed


def test_a_length_shorter_than_the_run_is_refused(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=20, **OPTIONS)
    before = snapshot(run)
    with pytest.raises(OptionError, match="--steps 10 is 10 steps, fewer than the 20"):
        train(out=run, resume=True, steps=10)
    assert snapshot(run) == before


def test_resuming_a_finished_run_changes_nothing(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **OPTIONS)
    before = (run / "metrics.jsonl").read_text()
    result = train(out=run, resume=True)
    assert result.steps == 10 and not math.isnan(result.best_val_loss)
    assert (run / "metrics.jsonl").read_text() == before  # no second final evaluation


def test_changed_data_is_refused_unless_allowed(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **OPTIONS)
    (tmp_path / "other.txt").write_text(word_text(3000, seed=1), encoding="utf-8")
    other = tokenize(tmp_path / "other.txt", tmp_path / "other").out  # same vocabulary
    with pytest.raises(CharLSTMError, match="the data differs.*--allow-data-change"):
        train(other, run, resume=True, steps=20)
    assert train(other, run, resume=True, steps=20, allow_data_change=True).steps == 20


def test_device_may_change_on_resume(data, tmp_path):
    run = tmp_path / "run"
    train(data, run, steps=10, **OPTIONS)
    assert train(out=run, resume=True, steps=15, device="auto", eval_every="5").steps == 15


def test_resume_with_ema_is_exact(data, tmp_path):
    """--ema: the averaged weights (the checkpoint's `model`) and the trained ones (in the run
    state) both continue bit for bit; the resume needs no --ema again (the run recorded it)."""
    train(data, tmp_path / "one", steps=40, ema=0.9, **OPTIONS)
    stopped = train(data, tmp_path / "two", steps=40, ema=0.9, reporter=InterruptAt(20), **OPTIONS)
    assert stopped.steps == 20
    assert train(out=tmp_path / "two", resume=True).steps == 40
    assert_same_run(tmp_path / "one", tmp_path / "two")
    one, two = (read_checkpoint(tmp_path / x / "last.pt") for x in ("one", "two"))
    assert one["run"]["ema_updates"] == two["run"]["ema_updates"] == 40
    for name, tensor in one["run"]["trained_model"].items():
        assert torch.equal(tensor, two["run"]["trained_model"][name]), name
        assert not torch.equal(tensor, one["model"][name]), name  # the average differs
    with pytest.raises(OptionError, match="cannot change --ema"):
        train(out=tmp_path / "two", resume=True, steps=50, ema=0.5)
