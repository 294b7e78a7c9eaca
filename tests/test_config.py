"""config.py: the presets, self-validation (every construction and replace() checks), the
option metadata the `train` command is built from, and cadences."""

from __future__ import annotations

import dataclasses

import pytest

from charlstm.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    flag,
    parse_cadence,
    resolve_config,
)
from charlstm.errors import CharLSTMError, OptionError

V, E, H = 11, 8, 16


def test_train_config_defaults_are_the_preset_they_name():
    default = TrainConfig()
    assert default.preset == "small"
    assert resolve_config("small", device="cpu") == dataclasses.replace(default, device="cpu")
    for name, values in PRESETS["small"].items():
        assert getattr(default, name) == values, name


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_resolves_and_overrides_win(preset):
    cfg = resolve_config(preset, device="cpu", hidden_size=24, steps=None)
    assert cfg.preset == preset and cfg.hidden_size == 24
    assert cfg.num_layers == PRESETS[preset]["num_layers"]


def test_replace_validates_again():
    cfg = TrainConfig()
    with pytest.raises(OptionError, match="--hidden must be a whole number >= 1, got -1"):
        dataclasses.replace(cfg, hidden_size=-1)
    with pytest.raises(OptionError, match="at most one of --steps, --epochs"):
        dataclasses.replace(cfg, steps=5, epochs=1.0)
    with pytest.raises(OptionError, match="unknown --precision 'fp8'; use one of auto, fp32"):
        dataclasses.replace(cfg, precision="fp8")


def test_every_option_has_help_and_a_flag_and_the_cli_has_them_all(run_cli):
    help_text = " ".join(run_cli("train", "--help").stdout.split())
    for f in TrainConfig.options():
        assert f.metadata["help"], f.name
        assert flag(f.name) in help_text, flag(f.name)
    assert flag("hidden_size") == "--hidden" and flag("time_budget_min") == "--time-budget"
    assert flag("batch_size") == "--batch-size"


def test_what_may_change_on_resume():
    assert TrainConfig.resumable() == {
        "steps", "epochs", "time_budget_min", "eval_every", "save_every", "log_every",
        "device", "threads", "compile", "max_bad_steps", "tensorboard", "wandb",
    }  # fmt: skip


def test_a_config_from_an_older_checkpoint_still_loads():
    """Unknown keys (fields since removed) are ignored; an integer cadence is read as steps."""
    old = {**TrainConfig().to_dict(), "eval_every": 500, "extra": {}, "no_such_field": 1}
    cfg = TrainConfig.from_dict(old)
    assert cfg.eval_every_parsed(1000) == (500, None)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("500", (500, None)), ("5m", (None, 5.0)), ("0.5m", (None, 0.5)), (10, (10, None))],
)
def test_cadences(text, parsed):
    assert parse_cadence(text) == parsed


@pytest.mark.parametrize("text", ["0", "-5", "5s", "m", "often", "0m", "nanm"])
def test_bad_cadences(text):
    with pytest.raises(ValueError):
        parse_cadence(text)


def test_auto_eval_cadence():
    assert TrainConfig(steps=2000).eval_every_parsed(2000) == (400, None)
    assert TrainConfig(steps=100_000).eval_every_parsed(100_000) == (500, None)
    assert TrainConfig(time_budget_min=10).eval_every_parsed(None) == (None, 2.0)
    assert TrainConfig(eval_every="3m").eval_every_parsed(10) == (None, 3.0)


def test_seed_range():
    assert TrainConfig(seed=0).seed == 0 and TrainConfig(seed=2**63 - 1).seed == 2**63 - 1
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(OptionError, match="--seed"):
            TrainConfig(seed=bad)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices_accepted_by_the_config(device):
    assert TrainConfig(device=device).device == device


def test_unknown_preset_is_a_usage_error():
    with pytest.raises(OptionError, match="unknown preset 'huge'"):
        resolve_config("huge")
    with pytest.raises(TypeError, match="unknown training option"):
        resolve_config("tiny", no_such_option=1)


def test_tie_weights_needs_embed_equal_hidden():
    with pytest.raises(CharLSTMError, match="--tie-weights needs --embed equal to --hidden"):
        ModelConfig(vocab_size=V, embed_size=8, hidden_size=16, tie_weights=True)


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("vocab_size", 0, "vocab.size"),
        ("embed_size", -1, "--embed"),
        ("hidden_size", -5, "--hidden"),
        ("hidden_size", 0, "--hidden"),
        ("num_layers", 0, "--layers"),
        ("hidden_size", 2.5, "--hidden"),
    ],
)
def test_non_positive_sizes_are_rejected(field, value, flag):
    with pytest.raises(CharLSTMError, match=f"{flag} must be a whole number >= 1, got {value}"):
        ModelConfig(**{"vocab_size": V, field: value})


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_outside_zero_one_is_rejected(dropout):
    with pytest.raises(CharLSTMError, match=r"--dropout must be in \[0, 1\)"):
        ModelConfig(vocab_size=V, dropout=dropout)


def test_config_round_trips_through_a_dict():
    config = ModelConfig(vocab_size=V, embed_size=E, hidden_size=H, num_layers=3, dropout=0.1)
    assert ModelConfig.from_dict({**config.to_dict(), "unknown_key": 1}) == config
