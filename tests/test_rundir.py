"""rundir.py: a run folder's rules — nothing is created before a run starts, a run is never
overwritten by accident, best.pt is a durable copy, metrics.jsonl survives a crash, a full disk
is one line with the space needed."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

import charlstm.training.rundir
from charlstm.errors import CharLSTMError
from charlstm.training.rundir import MetricsLog, RunDir, disk_full_error


def test_preflight_checks_without_creating_anything(tmp_path):
    run = RunDir(tmp_path / "a" / "b" / "run")
    run.preflight(need_bytes=1000)
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CharLSTMError, match="cannot write to run folder .*file is a file"):
        RunDir(blocker / "run").preflight(1000)


def test_preflight_says_how_much_space_is_needed(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        charlstm.training.rundir.shutil, "disk_usage", lambda p: usage._replace(free=10**6)
    )
    with pytest.raises(CharLSTMError, match="only 1 MB free .* needs about 42 MB"):
        RunDir(tmp_path / "run").preflight(42 * 10**6)


def test_a_folder_holds_a_run_once_it_has_a_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_new(force=False)  # nothing there yet
    run.create()
    (run.path / "config.json").write_text("{}")  # a run that never saved: nothing to lose
    run.check_new(force=False)
    (run.path / "last.pt").write_bytes(b"weights")
    with pytest.raises(CharLSTMError, match="already holds a run.*--resume.*--force"):
        run.check_new(force=False)
    run.check_new(force=True)
    with pytest.raises(CharLSTMError, match="nothing to resume"):
        RunDir(tmp_path / "other").check_resumable()


def test_clear_removes_only_the_run_files(tmp_path):
    run = RunDir(tmp_path)
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json", "notes.txt"):
        (tmp_path / name).write_text(name)
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_best_is_a_durable_copy_of_last(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        charlstm.training.rundir.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd)
    )
    run = RunDir(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"new weights" * 1000)
    (tmp_path / "best.pt").write_bytes(b"old")
    run.promote_best()
    assert (tmp_path / "best.pt").read_bytes() == b"new weights" * 1000
    assert synced  # the copy's data reached the disk before the rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_metrics_log_truncation_keeps_what_the_checkpoint_saw(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (10, 20, 30):
        log.append({"kind": "train", "step": step})
    with open(log.path, "ab") as f:
        f.write(b'{"kind": "train", "step": \xff\xfe 40\n{"step": "x"}\n{"kind": "tr')
    log.truncate_after(20)
    assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [10, 20]


def test_disk_full_is_one_line_with_the_space_needed(tmp_path):
    error = disk_full_error(OSError(errno.ENOSPC, "No space"), tmp_path / "last.pt", 42e6, 1234)
    assert isinstance(error, CharLSTMError)
    assert "needs about 42 MB" in str(error) and "--resume" in str(error)
    assert "step 1,234" in str(error)
    assert disk_full_error(OSError(errno.EACCES, "denied"), tmp_path / "x", 1, 1) is None
