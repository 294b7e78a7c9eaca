"""Hostile inputs to the command line (issue #35): files in run folders that are not what they
seem (endless, foreign, from another run, half-written by a killed process), a checkpoint
given as text, a malformed --url, names at the file system's length limit, and the cache in
an unwritable place. Each case: its exit code, one line naming the problem and the fix, and
nothing of the user's changed. `scripts/count_bad_inputs.py` counts them (marker bad_input)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY_KWARGS, tiny_args, tokenized_run, word_text
from typer.testing import CliRunner

import charlstm.cli.app
from charlstm.atomic import (
    NAME_MAX,
    STALE_AFTER_S,
    atomic_open,
    read_regular,
    remove_stale_temporaries,
    temp_path,
)
from charlstm.errors import CharLSTMError
from charlstm.training.trainer import train

bad = pytest.mark.bad_input


def cli(*args: object, env: dict | None = None):
    return CliRunner(env=env).invoke(charlstm.cli.app.app, [str(a) for a in args])


def child(*args: object, timeout: float = 60, env: dict | None = None, **kw):
    """`python -m charlstm ARGS` as a user runs it (a hang fails the test at `timeout`)."""
    return subprocess.run(
        [sys.executable, "-m", "charlstm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **kw,
    )


def one_error_line(stderr: str, *words: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its sha256: what "nothing changed" is checked against."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A tokenized folder and a short run on it."""
    return tokenized_run(tmp_path_factory.mktemp("hard"), 3000)


def copy_run(made, tmp_path: Path, name: str = "run") -> Path:
    import shutil

    return Path(shutil.copytree(made["run"], tmp_path / name))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def age(*paths: Path, seconds: float = STALE_AFTER_S + 1) -> None:
    """Make files look untouched for `seconds` (a temporary is stale only after a while)."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then), follow_symlinks=False)


# -- the low mechanisms -----------------------------------------------------------------------


@bad("report")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder", "huge"])
def test_report_refuses_a_metrics_file_that_would_never_end(made, tmp_path, kind):
    """#35 item 6: `report RUN` hung forever on a metrics.jsonl that is a symlink to /dev/zero
    or a FIFO. Run as a child process with a timeout, so that a hang fails the test."""
    run = copy_run(made, tmp_path)
    metrics = run / "metrics.jsonl"
    metrics.unlink()
    if kind == "dev-zero":
        metrics.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(metrics)
    elif kind == "folder":
        metrics.mkdir()
    else:
        with open(metrics, "wb") as f:  # sparse: 3 GB on paper, nothing on the disk
            f.truncate(3 << 30)
    done = child("report", run, timeout=30)
    assert done.returncode == 1, done.stderr
    expected = {"dev-zero": "character device", "fifo": "pipe", "folder": "folder", "huge": "bytes"}
    one_error_line(done.stderr, "metrics.jsonl", expected[kind])


def test_report_reads_a_symlinked_metrics_file(made, tmp_path):
    run = copy_run(made, tmp_path)
    real = tmp_path / "elsewhere.jsonl"
    (run / "metrics.jsonl").rename(real)
    (run / "metrics.jsonl").symlink_to(real)
    done = cli("report", run)
    assert done.exit_code == 0, done.stderr


@bad("train")
@pytest.mark.parametrize("name", ["meta.json", "tokenizer.json"])
def test_metadata_that_is_a_device_or_a_fifo_is_refused_not_read_forever(made, tmp_path, name):
    import shutil

    data = Path(shutil.copytree(made["data"], tmp_path / "tok"))
    (data / name).unlink()
    os.mkfifo(data / name)
    done = child("train", data, *tiny_args(), "--steps", "1", "--out", tmp_path / "r", timeout=30)
    assert done.returncode == 1
    one_error_line(done.stderr, name, "pipe")
    assert not (tmp_path / "r").exists()


def test_read_regular_bounds_and_kinds(tmp_path):
    small = tmp_path / "small.json"
    small.write_bytes(b"{}")
    assert read_regular(small, 2) == b"{}"
    with pytest.raises(CharLSTMError, match="more than the 1 such a file"):
        read_regular(small, 1)
    with pytest.raises(CharLSTMError, match="character device"):
        read_regular("/dev/zero", 1 << 20)


def test_temporary_names_fit_the_name_limit(tmp_path):
    """A name near the 255-byte limit still gets its temporary, beside it, and the temporary
    of a long non-ASCII name is cut between characters."""
    for name in ["a" * NAME_MAX, "é" * 127, "x" * 250 + ".pt"]:
        tmp = temp_path(tmp_path / name)
        assert len(os.fsencode(tmp.name)) <= NAME_MAX
        tmp.name.encode("utf-8")  # no half character at the cut
        if len(os.fsencode(name)) <= NAME_MAX:
            with atomic_open(tmp_path / name) as f:
                f.write(b"ok")
            assert (tmp_path / name).read_bytes() == b"ok"


def test_stale_temporaries_of_dead_writers_go_and_live_ones_stay(tmp_path):
    dead = dead_pid()
    (tmp_path / f".last.pt.tmp-{dead}").write_bytes(b"torn")
    (tmp_path / f".data.tmp-{dead}").mkdir()
    (tmp_path / f".best.pt.tmp-{os.getpid()}").write_bytes(b"being written")
    (tmp_path / f".out.old-{dead}").mkdir()  # a folder moved aside, its replacement never came
    (tmp_path / "notes.tmp-1").write_text("not ours: no leading dot")
    (tmp_path / f".fresh.pt.tmp-{dead}").write_bytes(b"another machine may be writing it")
    age(*[p for p in tmp_path.iterdir() if not p.name.startswith(".fresh")])
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.pt.tmp-{dead}", f".data.tmp-{dead}"])
    assert (tmp_path / f".best.pt.tmp-{os.getpid()}").exists()
    assert (tmp_path / "out").is_dir()  # moved back: it was the only copy
    assert (tmp_path / "notes.tmp-1").exists()
    assert (tmp_path / f".fresh.pt.tmp-{dead}").exists()  # written to a moment ago: kept


# -- kill -9 during a checkpoint write --------------------------------------------------------

WRITER = """
import sys, time
from charlstm.atomic import atomic_open
with atomic_open(sys.argv[1]) as f:
    f.write(b"x" * 4096); f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


@bad("train")
def test_a_checkpoint_write_killed_mid_way_leaves_nothing_after_the_next_run(made, tmp_path):
    """#35 item 6: a `kill -9` during a checkpoint write left RUN/.last.pt.tmp-PID that no later
    run removed. The next command that opens the folder removes it."""
    run = copy_run(made, tmp_path)
    before = (run / "last.pt").read_bytes()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run / "last.pt")], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    torn = run / f".last.pt.tmp-{writer.pid}"
    assert torn.exists()  # what kill -9 leaves
    assert (run / "last.pt").read_bytes() == before  # and last.pt is whole
    age(torn)  # a minute later
    done = cli("report", run)
    assert done.exit_code == 0, done.stderr
    assert not torn.exists()


@bad("train")
def test_a_resumed_run_removes_what_a_killed_run_left(made, tmp_path):
    run = copy_run(made, tmp_path)
    dead = dead_pid()
    for name in ("last.pt", "best.pt", "config.json"):
        (run / f".{name}.tmp-{dead}").write_bytes(b"torn")
        age(run / f".{name}.tmp-{dead}")
    done = cli("train", "--out", run, "--resume", "--steps", 8, "--quiet")
    assert done.exit_code == 0, done.stderr
    assert not list(run.glob(".*.tmp-*"))


# -- things that are not what the command expects ---------------------------------------------


@bad("train")
@pytest.mark.parametrize("what", ["best.pt", "last.pt", "folder"])
def test_a_checkpoint_given_as_training_data_is_named_with_the_fix(made, tmp_path, what):
    """#35 item 6: `train RUN/best.pt` said "use --level byte", which would train on the
    checkpoint's bytes."""
    run = copy_run(made, tmp_path)
    data = run if what == "folder" else run / what
    for command in (["train", data, *tiny_args(), "--out", tmp_path / "new"], ["tokenize", data]):
        done = cli(*command, "--level", "byte") if command[0] == "tokenize" else cli(*command)
        assert done.exit_code == 1, done.stderr
        line = one_error_line(done.stderr, "is a charlstm checkpoint", "--resume", "sample")
        assert "--level byte" not in line
    assert not (tmp_path / "new").exists()


@bad("tokenize")
def test_a_pytorch_file_of_another_model_is_not_text_either(tmp_path):
    other = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    done = cli("tokenize", other, "--out", tmp_path / "out")
    assert done.exit_code == 1
    one_error_line(done.stderr, "PyTorch file")


@bad("train")
@pytest.mark.parametrize("marker", ["hf-datasets", "charlstm-model", None, 7])
def test_a_meta_json_with_a_foreign_format_marker_is_named_with_a_fix(made, tmp_path, marker):
    """#35 item 6: a meta.json with a foreign format marker was named without a fix."""
    import shutil

    data = Path(shutil.copytree(made["data"], tmp_path / "tok"))
    meta = json.loads((data / "meta.json").read_text())
    meta["format"] = marker
    (data / "meta.json").write_text(json.dumps(meta))
    before = digest(data)
    done = cli("train", data, *tiny_args(), "--steps", 1, "--out", tmp_path / "r")
    assert done.exit_code == 1
    line = one_error_line(done.stderr, repr(marker), "charlstm tokenize CORPUS --out")
    if marker == "charlstm-model":
        assert "eval, sample and serve" in line
    assert digest(data) == before and not (tmp_path / "r").exists()


@bad("train")
def test_a_last_pt_from_another_run_is_refused_not_resumed(made, tmp_path):
    """#35 item 6: a last.pt from another run dropped into a run folder was resumed as if it
    were this run's. It is checked against the run id in config.json."""
    mine = copy_run(made, tmp_path, "mine")
    train(made["data"], tmp_path / "other", **TINY_KWARGS, steps=3, device="cpu")
    (mine / "last.pt").write_bytes((tmp_path / "other" / "last.pt").read_bytes())
    before = digest(mine)
    done = cli("train", "--out", mine, "--resume", "--steps", 10)
    assert done.exit_code == 1
    one_error_line(done.stderr, "belongs to another run", "--force")
    assert digest(mine) == before


def test_a_run_keeps_its_id_across_resumes(made, tmp_path):
    run = copy_run(made, tmp_path)
    first = json.loads((run / "config.json").read_text())["run_id"]
    assert len(first) == 16
    done = cli("train", "--out", run, "--resume", "--steps", 8, "--quiet")
    assert done.exit_code == 0, done.stderr
    assert json.loads((run / "config.json").read_text())["run_id"] == first
    from charlstm.model.checkpoint import read_checkpoint

    assert read_checkpoint(run / "last.pt")["run"]["run_id"] == first


BAD_URLS = [
    "notaurl",
    "http://",
    "ftp://mirror.example/enwik8.zip",
    "file:///etc/passwd",
    "http://[::1",
    "https://exa mple.org/x.zip",
    "http://mirror.example:99999/x",
    "",
]


@bad("corpus get")
@pytest.mark.parametrize("url", BAD_URLS)
def test_corpus_get_with_a_url_that_is_not_one_is_one_line(tmp_path, isolated_env, url):
    """#35 item 6: `corpus get NAME --url notaurl` -> unexpected ValueError. Refused before
    anything is created, the cache included."""
    done = cli("corpus", "get", "tinyshakespeare", "--url", url, "--dir", tmp_path / "c")
    assert done.exit_code == 2, done.stderr
    one_error_line(done.stderr, "--url", "https://")
    assert not (tmp_path / "c").exists()
    assert not (isolated_env / "downloads").exists()


# -- names, paths and the cache -----------------------------------------------------------------


def test_names_at_the_255_byte_limit_tokenize_and_train(tmp_path):
    """A corpus whose name is 250 bytes tokenizes into an --out of 250 bytes and trains from
    the raw file (its cache folder and run folder names are shortened, not refused)."""
    long = "n" * 246
    source = tmp_path / f"{long}.txt"
    source.write_text(word_text(2000), encoding="utf-8")
    out = tmp_path / ("o" * 250)
    assert cli("tokenize", source, "--out", out).exit_code == 0
    done = cli("train", source, *tiny_args(), "--steps", 2, "--quiet")  # default --out
    assert done.exit_code == 0, done.stderr
    (run,) = Path("checkpoints").iterdir()
    assert len(os.fsencode(run.name)) <= NAME_MAX and (run / "best.pt").exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses names that are not UTF-8")
def test_non_utf8_and_symlinked_paths(tmp_path):
    folder = tmp_path / os.fsdecode(b"d\xff\xfe")
    folder.mkdir()
    source = folder / os.fsdecode(b"text-\xe9.txt")  # Latin-1 é: not UTF-8
    source.write_text(word_text(2000), encoding="utf-8")
    link = tmp_path / "link"
    link.symlink_to(folder)
    out = Path(os.fsdecode(bytes(tmp_path) + b"/tok-\xff"))
    done = child("tokenize", link / source.name, "--out", out)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs-link"
    run.symlink_to(folder, target_is_directory=True)
    done = child("train", out, *tiny_args(), "--steps", 2, "--out", run / "r", "--quiet")
    assert done.returncode == 0, done.stderr
    for command in (["report", run / "r"], ["eval", run / "r" / "best.pt"]):
        done = child(*command)
        assert done.returncode == 0, (command, done.stderr)


@bad("train")
@pytest.mark.parametrize("how", ["under-a-file", "a-file"])
def test_an_unwritable_cache_is_named_by_its_variable(tmp_path, how):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = blocker / "cache" if how == "under-a-file" else blocker
    source = tmp_path / "t.txt"
    source.write_text(word_text(1000))
    done = cli("train", source, *tiny_args(), "--steps", 1, env={"CHARLSTM_CACHE": str(cache)})
    assert done.exit_code == 1
    one_error_line(done.stderr, f"CHARLSTM_CACHE={cache}", "writable")


def test_home_unset_still_finds_a_cache(tmp_path, monkeypatch):
    """HOME unset: Python falls back to the password database; with no entry there either (a
    bare container), the cache is a folder of this user's in the temporary folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "CHARLSTM_CACHE")}
    env["XDG_CACHE_HOME"] = ""
    done = subprocess.run(
        [sys.executable, "-c", "from charlstm.config import cache_root; print(cache_root())"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("charlstm"), done.stderr
    from charlstm.config import cache_dir, cache_root

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    for name in ("HOME", "CHARLSTM_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cache_root() == tmp_path / f"charlstm-cache-{os.getuid()}" / "charlstm"
    assert cache_dir("tokenized").is_dir()


# -- bench: every option checked before anything is measured ------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bench_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "malicious":
        marker = path.with_name("malicious.pt.ran")
        torch.save({"format": "charlstm-checkpoint", "format_version": 2, "x": _Evil(marker)}, path)
    elif kind == "text":
        path.write_text("not a checkpoint")
    elif kind == "fifo":
        os.mkfifo(path)
    return path


BENCH_BAD = {
    "corpus-huge": (["--corpus-mb", 100_000_000], 1, "GB are free"),
    "corpus-negative": (["--corpus-mb", -5], 2, "--corpus-mb -5"),
    "corpus-zero": (["--corpus-mb", 0], 2, "--corpus-mb 0"),
    "corpus-not-a-number": (["--corpus-mb", "lots"], 2, "--corpus-mb"),
    "workdir-proc": (["--workdir", "/proc/nope"], 1, "--workdir /proc/nope"),
    "workdir-a-file": (["--workdir", "FILE"], 1, "is a file"),
    "workdir-under-a-file": (["--workdir", "FILE/sub"], 1, "Not a directory"),
    "checkpoint-malicious": (["--checkpoint", "malicious"], 1, "refusing to load"),
    "checkpoint-text": (["--checkpoint", "text"], 1, "not a charlstm checkpoint"),
    "checkpoint-fifo": (["--checkpoint", "fifo"], 1, "pipe"),
    "checkpoint-missing": (["--checkpoint", "missing"], 1, "not found"),
    "section": (["--section", "everything"], 2, "unknown --section"),
}


@bad("bench")
@pytest.mark.parametrize("case", BENCH_BAD)
def test_bench_checks_every_option_before_any_work(tmp_path, monkeypatch, case):
    """#35 item 5: `--corpus-mb 100000000` started writing a 100 TB file, -5 and 0 died late
    with CalledProcessError, `--workdir /proc/nope` was an unexpected FileNotFoundError, and a
    malicious --checkpoint was refused only after minutes of measuring. Each is now one line
    before anything is measured or written (TMPDIR is watched for a work folder)."""
    args, code, words = BENCH_BAD[case]
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    (tmp_path / "tmp").mkdir()
    (tmp_path / "FILE").write_text("x")
    kinds = ("malicious", "text", "fifo", "missing")
    args = [
        str(tmp_path / a) if a.startswith("FILE") else _bench_checkpoint(tmp_path, a)
        if a in kinds else a
        for a in map(str, args)
    ]  # fmt: skip
    start = time.monotonic()
    done = cli("bench", *args)
    assert done.exit_code == code, done.stderr
    one_error_line(done.stderr, words)
    assert time.monotonic() - start < 20  # refused up front, not after measuring
    assert list((tmp_path / "tmp").iterdir()) == []  # no work folder was made
    assert not (tmp_path / "malicious.pt.ran").exists()
    made = {"FILE", "tmp", "malicious.pt", "text.pt", "fifo.pt"}
    assert {p.name for p in tmp_path.iterdir()} <= made  # nothing else was written


def test_bench_default_work_folder_is_private_and_removed(tmp_path, monkeypatch):
    """#36 item 5: the default work folder was a shared <tmp>/charlstm-bench that stayed."""
    import stat

    from charlstm.benchmark.scratch import work_folder

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with work_folder(None, 1) as work:
        assert work.parent == tmp_path and work.name.startswith("charlstm-bench-")
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        (work / "text.txt").write_text("x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), work_folder(None, 1) as work:
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_given_workdir_keeps_what_it_held_and_loses_what_a_stopped_run_added(tmp_path):
    from charlstm.benchmark.scratch import work_folder

    work = tmp_path / "w"
    work.mkdir()
    (work / "mine.txt").write_text("keep me")
    with pytest.raises(KeyboardInterrupt), work_folder(work, 1):
        (work / "text-100mb.txt").write_text("partial")
        raise KeyboardInterrupt
    assert [p.name for p in work.iterdir()] == ["mine.txt"]
    with work_folder(work, 1):
        (work / "tinyshakespeare").mkdir()
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt", "tinyshakespeare"]
    with pytest.raises(KeyboardInterrupt), work_folder(tmp_path / "new" / "deeper", 1):
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()  # a folder it made, it removes
