"""bench/quality.py: the budget in reference minutes turned into steps, its table, and one real
run end to end on the tiny corpus (a tiny shape, a budget of a few steps)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from tiny import word_text

from charlstm.config import PRESETS, TrainConfig

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


quality = _load("quality")


def test_idle_speed_is_the_anchor_for_the_default_shape_and_scales_with_parameters():
    from charlstm.training.autopreset import _params

    anchor = TrainConfig(**{**PRESETS["small"], "hidden_size": 640})
    assert quality.idle_chars_per_s(anchor, 65) == pytest.approx(quality.ANCHOR_IDLE_CHARS_PER_S)
    small = replace(anchor, hidden_size=512)
    ratio = _params(anchor, 65) / _params(small, 65)
    assert quality.idle_chars_per_s(small, 65) == pytest.approx(
        quality.ANCHOR_IDLE_CHARS_PER_S * ratio
    )
    # a recipe that only changes training (lr, regularisers) gets the same compute
    tuned = replace(anchor, lr=5e-3, ema=0.999, dropout=0.3, weight_decay=0.3)
    assert quality.idle_chars_per_s(tuned, 65) == quality.idle_chars_per_s(anchor, 65)


def test_ten_reference_minutes_are_the_idle_runs_step_count_of_the_default():
    import torch

    from charlstm.training.autopreset import choose

    choice = choose({"time_budget_min": 10.0}, 1_003_854, 65, torch.device("cpu"),
                    measure=lambda cfg, v, d, w: quality.idle_chars_per_s(cfg, v))  # fmt: skip
    row = choice.rows[choice.chosen]
    assert row.name == "2x640"
    steps = row.chars_in_budget / (row.config.batch_size * row.config.bptt)
    assert abs(steps - (2436 + 2211) / 2) < 5  # the two idle 10-minute runs of RESULTS.md


def test_set_values_are_read_as_json_where_they_parse():
    assert quality.parse_set(["lr=2e-3", "locked-dropout=true", "precision=fp32"]) == {
        "lr": 2e-3, "locked_dropout": True, "precision": "fp32"}  # fmt: skip


def test_table_gives_means_and_differences_from_default(capsys):
    def row(recipe, seed, static, dynamic):
        return dict(corpus="c", budget_ref_min=2.5, mode="steps", recipe=recipe, seed=seed,
                    static=static, dynamic=dynamic, shape="2x384", steps=10)  # fmt: skip

    quality.print_table([row("default", 1, 1.50, 1.40), row("default", 2, 1.52, 1.42),
                         row("ema", 1, 1.48, 1.41), row("ema", 2, 1.50, None)])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    default = next(line for line in lines if "| default |" in line)
    ema = next(line for line in lines if "| ema |" in line)
    assert "1.5100 | 1.4100 |" in default
    assert "| 1.4900 | 1.4100 | -0.0200 | +0.0000 |" in ema


@pytest.mark.slow
def test_a_run_trains_scores_and_appends_one_line_then_skips_it(tmp_path):
    text = tmp_path / "words.txt"
    text.write_text(word_text(20_000))
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(BENCH / "quality.py"), "run", "--data", str(text),
           "--set", "num_layers=1", "--set", "hidden_size=32", "--set", "embed_size=16",
           "--set", "batch_size=4", "--set", "bptt=16",
           "--budget", "0.00002", "--root", str(tmp_path / "runs"), "--results", str(results),
           "--no-dynamic"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["shape"] == "1x32" and record["steps"] >= 1
    assert 0 < record["static"] < 10 and record["mode"] == "steps"
    assert (tmp_path / "runs").is_dir() and "| 1x32 |" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "skip" in again.stderr
    assert len(results.read_text().splitlines()) == 1
    # the --dynamic grid on that run's best.pt: static first, then one line per setting
    (best,) = (tmp_path / "runs").glob("*/best.pt")
    grid = tmp_path / "dynamic.jsonl"
    done = subprocess.run([sys.executable, str(BENCH / "quality.py"), "dyngrid", str(best),
                           "--chars", "300", "--lr", "0", "1e-4", "--results", str(grid)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    static, still, adapted = [json.loads(line) for line in grid.read_text().splitlines()]
    assert static["mode"] == "static" and static["chars"] == still["chars"] == 299
    assert still["loss"] == pytest.approx(static["loss"], abs=1e-4)  # lr 0: nothing adapts
    assert adapted["loss"] != still["loss"] and adapted["lr"] == 1e-4
