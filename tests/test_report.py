"""`charlstm report` (learning curves from metrics.jsonl) and `charlstm info` (a checkpoint's
facts)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from charlstm.errors import CharLSTMError
from charlstm.training.report import has_matplotlib, read_curves, text_chart, write_png

METRICS = [
    {
        "kind": "train",
        "step": 10,
        "chars": 1000,
        "elapsed_s": 1.0,
        "train_loss": 3.0,
        "chars_per_s": 1000.0,
    },
    {
        "kind": "train",
        "step": 20,
        "chars": 2000,
        "elapsed_s": 2.0,
        "train_loss": 2.0,
        "chars_per_s": 1000.0,
    },
    {"kind": "eval", "step": 20, "chars": 2000, "elapsed_s": 2.1, "val_loss": 2.2},
    {
        "kind": "train",
        "step": 30,
        "chars": 3000,
        "elapsed_s": 3.0,
        "train_loss": 1.5,
        "chars_per_s": 1000.0,
    },
    {"kind": "eval", "step": 30, "chars": 3000, "elapsed_s": 3.1, "val_loss": 1.8},
    {
        "kind": "train",
        "step": 40,
        "chars": 4000,
        "elapsed_s": 4.0,
        "train_loss": 1.0,
        "chars_per_s": 1000.0,
    },
    {"kind": "eval", "step": 40, "chars": 4000, "elapsed_s": 4.1, "val_loss": 1.9},
]


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in METRICS) + '{"kind": "tr'  # torn last line
    (run / "metrics.jsonl").write_text(text)
    return run


def test_curves_and_summary_from_a_fixed_metrics_file(run_dir):
    curves = read_curves(run_dir)
    assert curves.train == [(1000, 3.0), (2000, 2.0), (3000, 1.5), (4000, 1.0)]
    assert curves.val == [(2000, 2.2), (3000, 1.8), (4000, 1.9)]
    assert curves.best == (3000, 1.8)
    s = curves.summary()
    assert s["steps"] == 40 and s["chars_seen"] == 4000
    assert s["best_val_loss"] == 1.8 and s["best_at_chars"] == 3000
    assert math.isclose(s["best_val_bpc"], 1.8 / math.log(2))
    assert math.isclose(s["best_val_perplexity"], math.exp(1.8))


def test_text_chart_places_every_point(run_dir):
    lines = text_chart(read_curves(run_dir), width=41, height=11)
    plot = lines[:11]
    assert len(lines) == 14
    assert plot[0].startswith("  3.000 |")  # top of the axis: the highest loss
    assert plot[-1].startswith("  1.000 |")
    cells = [line.split("|", 1)[1] for line in plot]
    assert sum(row.count("*") for row in cells) == 1  # the best val point, once
    assert sum(row.count("o") for row in cells) == 2  # the other val points
    assert sum(row.count(".") for row in cells) == 4  # every train point
    # the best point sits at 3000/4000 of the width, at loss 1.8
    best_row = next(i for i, row in enumerate(cells) if "*" in row)
    assert cells[best_row].index("*") == 30
    assert best_row == round((3.0 - 1.8) / 2.0 * 10)
    assert "4,000 chars" in lines[12]


def test_report_command_prints_chart_and_summary(run_cli, run_dir):
    result = run_cli("report", run_dir)
    assert result.exit_code == 0, result.stderr
    assert "best val loss" in result.stderr and "1.8000" in result.stderr
    assert result.stdout == ""
    as_json = run_cli("report", run_dir, "--json")
    assert json.loads(as_json.stdout)["best_val_loss"] == 1.8


def test_report_of_a_folder_without_metrics_is_a_clear_error(run_cli, tmp_path):
    result = run_cli("report", tmp_path)
    assert result.exit_code == 1
    assert "no metrics.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_png_is_a_valid_image(run_dir, tmp_path):
    out = write_png(read_curves(run_dir), tmp_path / "c.png")  # the plot extra is in .[dev]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_names_the_extra(run_dir, tmp_path, run_cli, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # what a missing package looks like
    assert not has_matplotlib()
    result = run_cli("report", run_dir, "--png", tmp_path / "c.png")
    assert result.exit_code == 1
    assert "charlstm[plot]" in result.stderr.strip().splitlines()[-1]  # after the text chart
    assert "Traceback" not in result.stderr
    with pytest.raises(CharLSTMError, match="matplotlib"):
        write_png(read_curves(run_dir), tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_info_describes_a_checkpoint(run_cli, tmp_path):
    from charlstm.data.prepare import tokenize
    from charlstm.training.trainer import train

    src = tmp_path / "t.txt"
    src.write_text("hello world, hello charlstm.\n" * 50)
    data = tokenize(src, tmp_path / "data").out
    train(
        data,
        tmp_path / "run",
        preset="tiny",
        hidden_size=16,
        embed_size=8,
        steps=4,
        bptt=8,
        batch_size=2,
    )
    result = run_cli("info", tmp_path / "run" / "best.pt", "--json")
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["format_version"] == 2
    assert facts["model"]["hidden_size"] == 16
    assert facts["vocab"]["size"] == len(set("hello world, hello charlstm.\n"))
    assert facts["steps"] == 4 and facts["chars_seen"] == 4 * 2 * 8
    assert facts["best_val"]["bpc"] == pytest.approx(facts["best_val"]["loss"] / math.log(2))
    assert facts["data"]["sha256"]
    table = run_cli("info", tmp_path / "run" / "best.pt")
    assert table.exit_code == 0 and "parameters" in table.stderr
    missing = run_cli("info", tmp_path / "nope.pt")
    assert missing.exit_code == 1 and "not found" in missing.stderr


def test_a_checkpoint_instead_of_the_run_folder(run_cli, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"weights")
    result = run_cli("report", tmp_path / "best.pt")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "is a file, not a run folder; pass the run folder" in result.stderr


def test_undecodable_or_wrong_typed_lines_are_skipped(run_cli, tmp_path):
    good = [json.dumps(r) for r in METRICS]
    bad = [b"\xff\xfe not utf-8", b'{"kind": "train", "step": "x", "chars": [], "train_loss": 1}',
           b'{"kind": "eval", "chars": "many", "val_loss": 1}', b"[1, 2]"]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join([*bad, *(g.encode() for g in good)]))
    result = run_cli("report", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["best_val_loss"] == 1.8


def test_drawing_a_png_leaves_the_callers_matplotlib_alone(tmp_path):
    import matplotlib

    from charlstm.training.report import Curves, write_png

    backend = matplotlib.get_backend()
    write_png(Curves(train=[(1, 2.0), (2, 1.5)], val=[(2, 1.7)]), tmp_path / "c.png")
    assert matplotlib.get_backend() == backend and (tmp_path / "c.png").stat().st_size > 1000
