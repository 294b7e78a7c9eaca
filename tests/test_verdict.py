"""A run that cannot be a useful model says so, one line per measured cause with its fix: too
few steps, too little text for the model, a machine far below its measured speed, a model
that overfit, a score no better than guessing; a healthy run says nothing of the kind. After
training, the CLI names the model, what its score means, and the next commands with the
run's real path."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_budget import FakeClock
from tiny import TINY_TRAINING, tiny_args, tokenized_words, word_text

from charlstm.data.prepare import tokenize
from charlstm.training.trainer import train
from charlstm.training.verdict import (
    MIN_SEEN_PER_PARAM,
    MIN_TEXT_PER_PARAM,
    OVERFIT_RISE,
    SLOW_SHARE,
    Baselines,
    RunFacts,
    baselines,
    diagnose,
)

TINY = TINY_TRAINING


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """~3,000 characters of random words: 2,700 to train on."""
    return tokenized_words(tmp_path_factory.mktemp("data"))


def messages(result) -> list[str]:
    return [str(w) for w in result.warnings]


def test_the_guesses_a_model_must_beat():
    """Uniform: ln V. Unigram: the val characters scored by the train split's add-one
    smoothed frequencies."""
    train_ids = np.array([0] * 90 + [1] * 10, dtype=np.uint8)
    val_ids = np.array([1, 0, 0, 1], dtype=np.uint8)  # scored: 0, 0, 1
    b = baselines(train_ids, val_ids, vocab_size=3)
    p = np.array([91, 11, 1]) / 103
    assert b.uniform_nats == pytest.approx(math.log(3))
    assert b.unigram_nats == pytest.approx(-(2 * math.log(p[0]) + math.log(p[1])) / 3)


def test_a_healthy_run_has_no_warning(data, tmp_path):
    result = train(data, tmp_path / "run", steps=300, eval_every=100, **TINY)
    assert result.chars_seen >= 3 * MIN_SEEN_PER_PARAM * result.params
    assert result.best_val_loss < result.baselines.unigram_nats
    assert result.warnings == []


def test_too_few_steps_names_the_steps_a_useful_model_needs(data, tmp_path):
    result = train(data, tmp_path / "run", steps=5, eval_every=5, **TINY)
    (line,) = messages(result)
    per_step = result.chars_seen / 5
    need = math.ceil(3 * MIN_SEEN_PER_PARAM * result.params / per_step)
    assert line.startswith(f"too few steps for this model: 5 steps saw {result.chars_seen:,}")
    # the fix names the steps; --preset tiny would be no smaller than this model
    assert line.endswith(f"train for about {need:,} steps (--steps)")


def test_too_few_steps_in_a_budget_names_the_minutes(data, tmp_path, monkeypatch):
    FakeClock(monkeypatch, step_s=10.0, validate_s=1.0)
    result = train(data, tmp_path / "run", time_budget_min=1, **TINY)
    line = next(m for m in messages(result) if m.startswith("too few steps"))
    assert "minutes at this run's" in line and "(--time-budget)" in line


def test_too_little_text_for_the_model(data, tmp_path):
    """2,700 characters for a 1 x LSTM(128): about 0.035 characters per parameter."""
    result = train(data, tmp_path / "run", steps=5, eval_every=5, **{**TINY, "hidden_size": 128})
    assert MIN_TEXT_PER_PARAM * result.params > 2700
    line = next(m for m in messages(result) if m.startswith("too little text"))
    assert f"2,700 train characters for {result.params:,} parameters" in line
    assert f"at least {MIN_TEXT_PER_PARAM * result.params:,.0f} characters" in line
    assert "or a smaller model: --preset tiny" not in line  # 1 x 128 is tiny's own shape


def test_the_20_kb_case_names_the_smaller_preset(data, tmp_path):
    """A model far larger than `--preset tiny` on a small text: the fix names tiny too."""
    options = {**TINY, "hidden_size": 256, "num_layers": 2}
    result = train(data, tmp_path / "run", steps=2, eval_every=2, **options)
    line = next(m for m in messages(result) if m.startswith("too little text"))
    assert line.endswith(
        "or a smaller model: --preset tiny (1 x LSTM(128), about 0.1 M parameters)"
    )


def test_a_machine_far_below_its_measured_speed(data, tmp_path, monkeypatch):
    """The first 10 steps at 10 ms, then every one at 1 s (other programs took the CPU): the
    run's speed is a small share of its fastest logged steps'."""
    FakeClock(monkeypatch, step_s=lambda step: 0.01 if step <= 10 else 1.0, validate_s=0.1)
    result = train(data, tmp_path / "run", steps=60, eval_every=60, **TINY)
    line = next(m for m in messages(result) if m.startswith("this machine ran far below"))
    chars = 16 * 4
    fastest, mean = 5 * chars / 0.05, 59 * chars / (9 * 0.01 + 50 * 1.0)
    assert mean < SLOW_SHARE * fastest
    assert (
        f"{mean:,.0f} chars/s, {mean / fastest:.2f}x the {fastest:,.0f} of its fastest 5 steps"
        in line
    )
    assert line.endswith("close them, or train when the machine is idle")


def test_no_better_than_guessing_from_frequencies(data, tmp_path):
    """Enough steps and text, but a learning rate that moves nothing."""
    result = train(data, tmp_path / "run", steps=200, eval_every=200, **{**TINY, "lr": 1e-9})
    (line,) = messages(result)
    assert line.startswith("the model is no better than guessing each character from its")
    assert f"val loss {result.best_val_loss:.3f} nats/char" in line


def sixty_minutes(history, budget_min=60.0) -> RunFacts:
    """The 60-minute auto run on tiny shakespeare, with its validations as `history`."""
    return RunFacts(
        steps=5624, chars_seen=5624 * 4096, params=7_541_697, train_chars=1_003_854,
        train_chars_per_s=6_422.0, reference_chars_per_s=None, reference="",
        best_val_nats=min(v for _, v in history), baselines=Baselines(4.174, 3.347),
        budget_min=budget_min, minutes_so_far=59.8, val_history=tuple(history),
    )  # fmt: skip


def test_a_run_whose_val_loss_rose_after_its_best_overfit():
    """Measured: `train --time-budget 60` chose 2x768 for 24 epochs, was best at step 3,387 of
    5,624 and ended 0.013 above it; the warning names both, and the budget that reaches it."""
    history = [(1135, 1.4580), (2254, 1.4233), (3387, 1.4019), (4531, 1.4086), (5624, 1.4153)]
    (line,) = [str(w) for w in diagnose(sixty_minutes(history))]
    assert line.startswith("the model overfit: val loss was best at step 3,387 (1.4019")
    assert "rose to 1.4153 by step 5,624" in line and "the last 40% of the steps" in line
    assert line.endswith("a --time-budget of about 37 min reaches the same")
    # still falling, or up by less than the noise between seeds: nothing to say
    assert not diagnose(sixty_minutes(history[:3]))
    small = history[:3] + [(4531, 1.4019 + OVERFIT_RISE / 2), (5624, 1.4019 + OVERFIT_RISE / 2)]
    assert not diagnose(sixty_minutes(small))
    dip = history[:3] + [(4531, 1.4200), (5624, 1.4100)]  # falling again at the end
    assert not diagnose(sixty_minutes(dip))


def test_a_tiny_model_trained_far_past_its_text_is_told_it_overfit(tmp_path):
    """A real run on a text that ends in random letters (its val split): nothing there can be
    learnt, so every step after the model knows the letters' frequencies memorises the train
    split, and the val loss rises (best at step 300 of 600, then 2.4055 from 2.3553)."""
    import random

    rng = random.Random(0)
    noise = "".join(rng.choice("abcdefghij") for _ in range(1500))
    (tmp_path / "corpus.txt").write_text(word_text(3000)[:1500] + noise, encoding="utf-8")
    data = tokenize(tmp_path / "corpus.txt", tmp_path / "tok").out
    result = train(data, tmp_path / "run", steps=600, eval_every=60, **TINY)
    overfit = [m for m in messages(result) if m.startswith("the model overfit")]
    assert overfit, messages(result)
    assert "--dropout" in overfit[0] and "so best.pt holds step" in overfit[0]


# -- the CLI ---------------------------------------------------------------------------------
def test_after_training_the_cli_names_the_model_its_meaning_and_the_next_commands(
    run_cli, data, tmp_path
):
    run = tmp_path / "run"
    result = run_cli("train", data, "--out", run, *tiny_args(steps=5, log_every=5))
    assert result.exit_code == 0, result.stderr
    err = result.stderr
    assert "warning: too few steps for this model: 5 steps" in err
    assert f"the model: {run / 'best.pt'}, val loss" in err
    assert "guessing each character from its frequency scores" in err
    for command in (
        f"charlstm sample {run / 'best.pt'} --length 500 --temperature 0.8",
        f"charlstm eval {run / 'best.pt'}",
        f"charlstm report {run}",
        f"charlstm train --out {run} --resume --steps 10",
    ):
        assert command in err
    quiet = run_cli("train", data, "--out", tmp_path / "q", "--quiet", *tiny_args(steps=5))
    assert quiet.stderr.startswith("warning: too few steps") and "next:" not in quiet.stderr
