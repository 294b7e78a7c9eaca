"""The Python API as docs/api.md shows it: tokenize, train, load, evaluate, generate."""

from __future__ import annotations

import math
import subprocess
import sys

import charlstm


def test_readme_api_example_runs(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("ROMEO: What light through yonder window breaks?\n" * 40)
    data = charlstm.tokenize(src, out=tmp_path / "ts", force=True)
    run = charlstm.train(
        data.out,
        out=tmp_path / "demo",
        preset="tiny",
        steps=20,
        hidden_size=32,
        embed_size=16,
        bptt=16,
        batch_size=4,
    )
    assert run.best_val_loss is not None
    assert math.isclose(run.best_val_bpc, run.best_val_loss / math.log(2))

    ckpt = charlstm.load_checkpoint(tmp_path / "demo" / "best.pt")
    scored = charlstm.evaluate(ckpt, text=src)
    assert scored.chars == len(src.read_text()) - 1
    text = charlstm.generate(ckpt, prime="ROMEO:", length=50, temperature=0.8, seed=1)[0]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50


def test_public_names_resolve_and_errors_are_typed():
    for name in charlstm.__all__:
        assert getattr(charlstm, name) is not None
    assert callable(charlstm.train) and callable(charlstm.evaluate)
    err = charlstm.CharLSTMError("bad thing", "do this")
    assert str(err) == "bad thing; do this" and err.hint == "do this"


def test_import_is_light():
    code = "import sys, charlstm; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
