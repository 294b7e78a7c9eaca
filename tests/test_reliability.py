"""Reliability promises: exact resume after SIGINT and SIGKILL, crash-safe files, the run lock,
the NaN guard, and the pre-flight checks on data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_KWARGS, tiny_args

from charlstm.data.prepare import tokenize
from charlstm.errors import CharLSTMError
from charlstm.model.checkpoint import read_checkpoint
from charlstm.training.rundir import MetricsLog, RunDir
from charlstm.training.trainer import train

TINY = [*tiny_args(dropout=0.1, seed=3), "--quiet"]


def _text(n_lines: int = 400, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "king", "queen", "shall", "not", "be", "and", "my", "lord", "thou"]
    return "".join(" ".join(rng.choice(words, size=8)) + ".\n" for _ in range(n_lines))


@pytest.fixture
def data(tmp_path) -> Path:
    src = tmp_path / "corpus.txt"
    src.write_text(_text(), encoding="utf-8")
    return tokenize(src, tmp_path / "data").out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "charlstm", *args]


# one thread per child: tiny models gain nothing from two, and the suite runs 2 workers
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _metrics(run: Path) -> list[tuple]:
    """The deterministic part of metrics.jsonl (losses per step, not timings)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows.append((r["kind"], r["step"], r.get("train_loss"), r.get("val_loss")))
    return rows


def _weights(path: Path) -> dict:
    return read_checkpoint(path)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"training ended before the signal could be sent: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for training to progress")
        time.sleep(0.01)


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            steps.append(json.loads(line)["step"])
    return max(steps)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_and_resumed_run_equals_one_go(data, tmp_path, sig):
    """A run with a non-default preset and options on a non-default data folder, stopped by
    Ctrl-C or kill -9, then continued by `charlstm train --out RUN --resume` and nothing else,
    ends bitwise identical to the same run done in one go."""
    steps = "400"
    common = [str(data), *TINY, "--steps", steps, "--eval-every", "120", "--save-every", "25"]
    one_go = tmp_path / "one-go"
    subprocess.run(
        _cli("train", *common, "--out", str(one_go)), check=True, capture_output=True, env=ENV
    )

    run = tmp_path / "interrupted"
    proc = subprocess.Popen(
        _cli("train", *common, "--out", str(run)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    # interrupt once at least one checkpoint exists and training is well under way
    _wait_for(lambda: (run / "last.pt").exists() and _steps_logged(run) >= 100, proc)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "interrupted" in proc.stderr.read()  # said even with --quiet
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped_at = read_checkpoint(run / "last.pt")["run"]["step"]
    assert 0 < stopped_at < int(steps)

    resumed = subprocess.run(
        _cli("train", "--out", str(run), "--resume", "--quiet"),
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path.parent,  # somewhere else: the run folder alone must say everything
    )
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_weights(one_go / "last.pt", run / "last.pt")
    _assert_same_weights(one_go / "best.pt", run / "best.pt")
    assert _metrics(one_go) == _metrics(run)


def test_torn_metrics_line_is_tolerated_on_resume(data, tmp_path):
    run = tmp_path / "run"
    kw = dict(
        **TINY_KWARGS,
        seed=1,
        eval_every=10,
        save_every="10",
    )
    train(data, run, steps=20, **kw)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 2')  # a crash in the middle of a line
    result = train(data, run, steps=40, resume=True, **kw)
    assert result.steps == 40
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every line parses again


def test_metrics_log_drops_lines_after_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (10, 20, 30):
        log.append({"kind": "train", "step": step})
    log.truncate_after(20)
    assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [10, 20]


def test_checkpoint_write_is_atomic(data, tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves the previous last.pt loadable."""
    import charlstm.model.checkpoint as ckpt

    run = tmp_path / "run"
    kw = dict(**TINY_KWARGS, seed=1)
    train(data, run, steps=10, **kw)
    before = (run / "last.pt").read_bytes()

    real_save = torch.save

    def crash_half_way(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(100)  # the bytes so far ...
        raise OSError(28, "No space left on device")  # ... and then the disk is full

    monkeypatch.setattr(ckpt.torch, "save", crash_half_way)
    with pytest.raises(CharLSTMError, match="the disk is full: writing .*last.pt needs about"):
        train(data, run, steps=20, resume=True, **kw)
    assert (run / "last.pt").read_bytes() == before
    assert read_checkpoint(run / "last.pt")["run"]["step"] == 10
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_second_train_on_same_run_dir_refuses(data, tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    with RunDir(run).lock():
        result = run_cli("train", data, *TINY, "--steps", "5", "--out", run)
    assert result.exit_code == 1
    assert "in use by another charlstm train" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (run / "last.pt").exists()


def test_lock_of_a_killed_process_does_not_stick(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from charlstm.training.rundir import RunDir\n"
            f"with RunDir({str(run)!r}).lock():\n    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(CharLSTMError, match="in use"), RunDir(run).lock():
        pass
    holder.kill()
    holder.wait()
    with RunDir(run).lock():  # the OS released the dead process's lock
        pass


def test_nan_guard_skips_bad_steps_then_stops_with_files_untouched(data, tmp_path, monkeypatch):
    import charlstm.training.step as trainer

    run = tmp_path / "run"
    kw = dict(**TINY_KWARGS, seed=1, eval_every=10)
    train(data, run, steps=10, **kw)
    last, best = (run / "last.pt").read_bytes(), (run / "best.pt").read_bytes()

    real_loss = trainer._loss
    calls = {"n": 0}

    def sometimes_nan(logits, targets):
        calls["n"] += 1
        loss = real_loss(logits, targets)
        return loss * float("nan") if calls["n"] in (3, 4) else loss

    monkeypatch.setattr(trainer, "_loss", sometimes_nan)
    result = train(data, run, steps=20, resume=True, **kw)
    assert result.skipped_steps == 2
    weights = read_checkpoint(run / "last.pt")["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())

    train(data, run, steps=10, force=True, **kw)
    last, best = (run / "last.pt").read_bytes(), (run / "best.pt").read_bytes()
    monkeypatch.setattr(trainer, "_loss", lambda lg, t: real_loss(lg, t) * float("inf"))
    with pytest.raises(CharLSTMError, match="lower --lr"):
        train(data, run, steps=100, resume=True, max_bad_steps=5, **kw)
    assert (run / "last.pt").read_bytes() == last
    assert (run / "best.pt").read_bytes() == best


def test_tokenized_folder_inconsistent_with_meta_is_refused(data, tmp_path, run_cli):
    meta = json.loads((data / "meta.json").read_text())
    meta["chars"]["train"] += 5
    (data / "meta.json").write_text(json.dumps(meta))
    result = run_cli("train", data, *TINY, "--steps", "5", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "does not match meta.json" in result.stderr
    assert not (tmp_path / "run").exists()


def test_not_enough_disk_is_refused_before_training(data, tmp_path, monkeypatch):
    import shutil as shutil_module

    import charlstm.training.rundir

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(
        charlstm.training.rundir.shutil, "disk_usage", lambda p: usage._replace(free=1000)
    )
    with pytest.raises(CharLSTMError, match="MB free"):
        train(data, tmp_path / "run", preset="tiny", steps=5)
    assert not (tmp_path / "run").exists()  # no folder is left behind by a refused run


def test_interrupt_handler_restores_signals():
    from charlstm.training.interrupt import Interrupt

    before = signal.getsignal(signal.SIGINT)
    with Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert interrupt.requested
    assert signal.getsignal(signal.SIGINT) is before
