"""`--preset auto` (charlstm.training.autopreset): the rule on synthetic speed tables (budget and
device speed move the choice up the ladder, epochs move the dropout), the user's options winning,
the real measurement on a tiny shape, and the CLI: a run that records its choice and resumes from
its folder alone, and the usage errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny import word_text
from typer.testing import CliRunner

import charlstm.cli.app
import charlstm.training.autopreset as autopreset
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.prepare import tokenize
from charlstm.errors import OptionError
from charlstm.model.network import CharLSTM
from charlstm.training.autopreset import (
    LADDER,
    MIN_CHARS_PER_PARAM,
    Candidate,
    choose,
    measure_chars_per_s,
    parameter_count,
    regularisation_for_epochs,
)
from charlstm.training.trainer import train

CPU = torch.device("cpu")
TINY_SHAKESPEARE_TRAIN = 1_003_854


def compute_bound(work_per_s: float):
    """A synthetic device: chars/s inversely proportional to the parameter count (what the
    measured 10-minute table shows, roughly), and a record of which shapes were timed."""
    timed: list[str] = []

    def measure(cfg: TrainConfig, vocab_size: int, device, world_size: int = 1) -> float:
        timed.append(f"{cfg.num_layers}x{cfg.hidden_size}")
        params = parameter_count(cfg.num_layers, cfg.hidden_size, cfg.embed_size, vocab_size,
                                 cfg.tie_weights)  # fmt: skip
        return work_per_s / params

    measure.timed = timed
    return measure


# this CPU's measured speeds: `small` (3.46 M params) at ~12,000 chars/s
THIS_CPU = 12_000 * 3.46e6


def pick(minutes: float, work_per_s: float = THIS_CPU, train_chars=TINY_SHAKESPEARE_TRAIN, **given):
    measure = compute_bound(work_per_s)
    choice = choose({"time_budget_min": minutes, **given}, train_chars, 65, CPU, measure=measure)
    return choice, measure.timed


def test_this_cpu_at_10_minutes_picks_small_and_stops_climbing():
    choice, timed = pick(10)
    assert choice.rows[choice.chosen].name == "2x512"
    cfg = choice.config
    assert (cfg.preset, cfg.embed_size, cfg.bptt, cfg.batch_size, cfg.lr) == (
        "auto", 128, 128, 32, 3e-3)  # fmt: skip
    # 2x640 falls short, so nothing larger is timed
    assert timed == ["2x384", "2x512", "2x640"]
    assert [r.verdict for r in choice.rows[:4]] == ["fits", "chosen", "too few chars",
                                                    "not measured"]  # fmt: skip
    assert choice.rows[2].chars_per_param < MIN_CHARS_PER_PARAM <= choice.rows[1].chars_per_param
    assert "2x512 is the largest shape" in choice.reason


def test_a_longer_budget_or_a_faster_device_picks_a_larger_model():
    ten, sixty = pick(10)[0], pick(60)[0]
    gpu = pick(10, work_per_s=THIS_CPU * 1000)[0]
    params = [c.rows[c.chosen].params for c in (ten, sixty, gpu)]
    assert params[0] < params[1] < params[2], params
    assert gpu.rows[gpu.chosen].name == LADDER[-1].name
    assert gpu.config.embed_size == 512 and gpu.config.bptt == 256  # the large preset's
    assert "climbing ended at the largest candidate" in gpu.reason


def test_a_tiny_budget_falls_back_to_the_smallest_shape():
    choice, timed = pick(0.1)
    assert choice.chosen == 0 and timed == ["2x384"]
    assert "no shape sees" in choice.reason


def test_many_epochs_get_more_regularisation_than_one():
    reg = regularisation_for_epochs
    assert reg(0.5) == {"dropout": 0.0, "weight_decay": 0.01}  # nothing seen twice
    assert reg(6) == {"dropout": 0.1, "weight_decay": 0.01}  # the measured point
    assert reg(9.4) == {"dropout": 0.3, "weight_decay": 0.3}  # auto's 10 minutes, measured
    for key in ("dropout", "weight_decay"):
        assert reg(1000)[key] >= reg(30)[key] >= reg(6)[key]
    small_corpus, _ = pick(60, train_chars=200_000)
    huge_corpus, _ = pick(60, train_chars=10**9)
    assert small_corpus.config.hidden_size == huge_corpus.config.hidden_size  # same shape
    assert small_corpus.epochs > 40 and huge_corpus.epochs < 1
    assert (small_corpus.config.dropout, small_corpus.config.weight_decay) == (0.3, 0.3)
    assert (huge_corpus.config.dropout, huge_corpus.config.weight_decay) == (0.0, 0.01)
    assert small_corpus.regularisation == {"dropout": 0.3, "weight_decay": 0.3}
    assert not small_corpus.regularisation_measured and not huge_corpus.regularisation_measured
    ten = pick(10)[0]
    assert ten.regularisation_measured and ten.config.dropout == 0.1
    assert "dropout 0.1, weight decay 0.01" in ten.reason


def test_the_users_regularisation_wins_over_the_epochs_band():
    choice, _ = pick(60, train_chars=200_000, weight_decay=0.05)
    assert (choice.config.dropout, choice.config.weight_decay) == (0.3, 0.05)
    assert choice.user_set == {"--weight-decay": 0.05}
    assert (
        "weight decay 0.05 (yours)" in choice.reason and "dropout 0.3 (yours)" not in choice.reason
    )


def test_the_users_options_win_and_are_named():
    choice, timed = pick(60, dropout=0.2, hidden_size=256)
    assert choice.config.dropout == 0.2 and choice.config.hidden_size == 256
    # the ladder collapses to the depths it still offers
    assert timed[0] == "2x256" and len(timed) == len(set(timed))
    assert choice.user_set == {"--dropout": 0.2, "--hidden": 256}
    assert "(yours)" in choice.reason
    tied, _ = pick(10, tie_weights=True)
    assert tied.config.embed_size == tied.config.hidden_size


def test_measuring_stays_within_its_cap(monkeypatch):
    """A slow measurement stops the climb before the cap is passed (no timed assertion: the
    clock is the synthetic one)."""
    clock = [0.0]
    monkeypatch.setattr(autopreset, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    inner = compute_bound(THIS_CPU * 100)

    def slow(cfg, vocab_size, *args):
        clock[0] += 1e-6 * parameter_count(cfg.num_layers, cfg.hidden_size, cfg.embed_size,
                                           vocab_size, False)  # fmt: skip
        return inner(cfg, vocab_size, *args)

    choice = choose({"time_budget_min": 60}, TINY_SHAKESPEARE_TRAIN, 65, CPU, measure=slow)
    # 2.0 + 3.5 + 5.3 s; 2x768 would take ~7.5 s more, past the 15 s cap
    assert inner.timed == ["2x384", "2x512", "2x640"]
    assert choice.measure_s == pytest.approx(10.77, abs=0.01)
    assert "cap" in choice.reason and choice.rows[3].verdict == "not measured"


def test_parameter_count_matches_the_model():
    for layers, hidden, embed, tied in [(2, 48, 16, False), (3, 32, 32, True), (1, 8, 4, False)]:
        config = ModelConfig(vocab_size=11, num_layers=layers, hidden_size=hidden,
                             embed_size=embed, tie_weights=tied)  # fmt: skip
        expected = CharLSTM(config).num_parameters()
        assert parameter_count(layers, hidden, embed, 11, tied) == expected


def test_measure_times_real_steps_of_a_tiny_shape():
    cfg = TrainConfig(num_layers=1, hidden_size=16, embed_size=8, bptt=8, batch_size=2)
    rate = measure_chars_per_s(cfg, 13, CPU, min_time_s=0.0, max_steps=2)
    assert math.isfinite(rate) and rate > 0


def test_preset_auto_is_not_a_fixed_preset():
    from charlstm.config import resolve_config

    with pytest.raises(OptionError, match="chosen by measuring"):
        resolve_config("auto")
    with pytest.raises(OptionError, match="cannot be 'auto'"):
        train(config=TrainConfig(preset="auto", time_budget_min=1))


# -- through the CLI -----------------------------------------------------------------------------
def cli(*args: object):
    return CliRunner().invoke(charlstm.cli.app.app, [str(a) for a in args])


@pytest.fixture
def data(tmp_path) -> Path:
    source = tmp_path / "corpus.txt"
    source.write_text(word_text(3000), encoding="utf-8")
    return tokenize(source, tmp_path / "tok").out


@pytest.fixture
def tiny_ladder(monkeypatch):
    ladder = (Candidate(1, 16, "tiny"), Candidate(1, 24, "tiny"), Candidate(2, 24, "tiny"))
    monkeypatch.setattr(autopreset, "LADDER", ladder)
    return ladder


FAST = ["--bptt", "16", "--batch-size", "4", "--device", "cpu", "--log-every", "5"]


def test_cli_auto_trains_records_its_choice_and_resumes_without_measuring(
    data, tmp_path, tiny_ladder, monkeypatch
):
    out = tmp_path / "run"
    first = cli("train", data, "--out", out, "--preset", "auto", "--time-budget", "0.05", *FAST)
    assert first.exit_code == 0, first.stderr
    assert "--preset auto: 0.05 min on cpu" in first.stderr
    assert "chosen: " in first.stderr and "why: " in first.stderr
    assert "yours, kept over auto's: --bptt 16, --batch-size 4" in first.stderr
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["preset"] == "auto"
    assert (config["num_layers"], config["hidden_size"]) in {(c.num_layers, c.hidden_size)
                                                             for c in tiny_ladder}  # fmt: skip
    assert (config["bptt"], config["batch_size"], config["embed_size"]) == (16, 4, 32)
    assert config["time_budget_min"] == 0.05
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and steps[-1]["elapsed_s"] > 0

    def no_measuring(*args, **kwargs):
        raise AssertionError("a resumed run must not measure again")

    monkeypatch.setattr(autopreset, "measure_chars_per_s", no_measuring)
    resumed = cli("train", "--out", out, "--resume", "--time-budget", "0.01")
    assert resumed.exit_code == 0, resumed.stderr
    assert "--preset auto" not in resumed.stderr
    again = json.loads((out / "config.json").read_text())["train"]
    assert {k: v for k, v in again.items() if k != "time_budget_min"} == {
        k: v for k, v in config.items() if k != "time_budget_min"
    }
    # naming the preset again is not a change
    named = cli("train", "--out", out, "--resume", "--preset", "auto", "-q")
    assert named.exit_code == 0, named.stderr


@pytest.mark.parametrize(
    "length, words",
    [
        ([], ["--preset auto needs --time-budget"]),
        (["--steps", "5"], ["--time-budget MINUTES instead of --steps"]),
        (["--epochs", "2"], ["instead of --epochs"]),
    ],
)
def test_cli_auto_without_a_budget_is_a_usage_error(data, tmp_path, length, words):
    out = tmp_path / "run"
    result = cli("train", data, "--out", out, "--preset", "auto", *length)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


def test_library_train_returns_the_choice_and_reports_it(data, tmp_path, tiny_ladder):
    from charlstm.training.progress import NullReporter

    class Seen(NullReporter):
        choices: list = []

        def auto_chosen(self, choice):
            self.choices.append(choice)

    reporter = Seen()
    result = train(data, tmp_path / "run", preset="auto", time_budget_min=0.01, bptt=16,
                   batch_size=4, device="cpu", reporter=reporter)  # fmt: skip
    assert reporter.choices == [result.auto_choice]
    chosen = result.auto_choice.config
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved == chosen.to_dict()
    assert result.elapsed_s >= result.auto_choice.measure_s  # the measuring counts


# -- auto as the default for a time budget -------------------------------------------------------
@pytest.mark.parametrize(
    "given, preset",
    [
        ({"time_budget_min": 10, "device": "cpu"}, "auto"),
        ({"time_budget_min": 10}, "auto"),  # device auto: this machine has no GPU
        ({"device": "cpu"}, "small"),  # no budget: nothing to size
        ({"steps": 500, "device": "cpu"}, "small"),
        ({"time_budget_min": 10, "device": "cpu", "hidden_size": 768}, "small"),  # shape given
        ({"time_budget_min": 10, "device": "cpu", "num_layers": 3}, "small"),
        ({"time_budget_min": 10, "device": "cuda"}, "medium"),  # GPUs keep their default
        ({"time_budget_min": 10, "device": "mps"}, "small"),
    ],
)
def test_the_default_preset_is_auto_for_a_cpu_time_budget_with_no_shape(given, preset):
    from charlstm.training.plan import default_preset

    assert default_preset(given) == preset


def test_cli_time_budget_alone_sizes_the_model_and_resume_finds_its_folder(data, tiny_ladder):
    name = data.name
    first = cli("train", data, "--time-budget", "0.05", *FAST)
    assert first.exit_code == 0, first.stderr
    assert "--preset auto: 0.05 min on cpu" in first.stderr and "chosen: " in first.stderr
    run = Path("checkpoints") / f"{name}-auto"  # the tests run in a scratch folder
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["preset"] == "auto"
    before = (run / "last.pt").stat().st_mtime_ns
    resumed = cli("train", data, "--resume", "--time-budget", "0.01", "-q")
    assert resumed.exit_code == 0, resumed.stderr
    assert (run / "last.pt").stat().st_mtime_ns > before  # it continued that run
    assert not (Path("checkpoints") / f"{name}-small").exists()


def test_cli_a_shape_with_a_time_budget_keeps_the_fixed_default(data, tiny_ladder):
    result = cli("train", data, "--time-budget", "0.02", "--hidden", "24", "--embed", "16",
                 *FAST, "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = json.loads((Path("checkpoints") / f"{data.name}-small" / "config.json").read_text())
    assert config["train"]["preset"] == "small" and config["train"]["hidden_size"] == 24


def test_cli_resume_with_two_default_runs_asks_which(data, tiny_ladder):
    for extra in (["--time-budget", "0.02"], ["--steps", "3", "--hidden", "24"]):
        made = cli("train", data, *extra, *FAST, "-q")
        assert made.exit_code == 0, made.stderr
    folders = [Path("checkpoints") / f"{data.name}-{p}" for p in ("auto", "small")]
    before = {f: (f / "last.pt").read_bytes() for f in folders}
    result = cli("train", data, "--resume")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "both" in lines[0] and "--out" in lines[0], result.stderr
    assert all(str(f) in lines[0] for f in folders)
    assert {f: (f / "last.pt").read_bytes() for f in folders} == before
    # naming the preset says which
    named = cli("train", data, "--resume", "--preset", "small", "--steps", "4", "-q")
    assert named.exit_code == 0, named.stderr


def test_cli_resume_with_no_default_run_names_where_it_looked(data):
    result = cli("train", data, "--resume")
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing to resume"), result.stderr
    assert f"{data.name}-auto" in lines[0] and f"{data.name}-small" in lines[0]
    assert "Traceback" not in result.stderr and not Path("checkpoints").exists()
