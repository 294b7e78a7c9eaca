"""The run folder: its file names, the lock, the pre-flight checks, the metrics log, config.json
and best.pt. Nothing here knows about models: it keeps a run's files safe.

A run folder exists only once a run has really started: every check that can refuse a run
(options, data, disk space, a resume's configuration) happens before the folder is created or
anything in it is written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from charlstm.atomic import (
    METRICS_MAX_BYTES,
    copy_file,
    open_regular,
    read_json,
    remove_stale_temporaries,
    write_text,
)
from charlstm.errors import CharLSTMError

LAST, BEST, METRICS, CONFIG, CURVES = (
    "last.pt",
    "best.pt",
    "metrics.jsonl",
    "config.json",
    "curves.png",
)
RUN_FILES = (LAST, BEST, METRICS, CONFIG, CURVES)
# TensorBoard's event files (a folder), and the id of the run's Weights & Biases run
TENSORBOARD, WANDB_ID = "tb", "wandb-id.txt"
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass(frozen=True)
class RunDir:
    """A training run's folder and the rules for its files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def name(self) -> str:
        """The run's name: its folder's name (also for `--out .`)."""
        return self.path.resolve().name

    def holds_run(self) -> bool:
        """A run that saved a checkpoint: something --resume can continue, --force would lose."""
        return self.file(LAST).exists() or self.file(BEST).exists()

    def check_new(self, force: bool) -> None:
        """Never overwrite a run by accident: an existing one needs --resume or --force."""
        if self.path.exists() and not self.path.is_dir():
            raise CharLSTMError(f"{self.path} exists and is not a folder", "choose another --out")
        if self.holds_run() and not force:
            raise CharLSTMError(
                f"run folder {self.path} already holds a run",
                "pass --resume to continue it, --force to start over, or another --out",
            )

    def check_resumable(self) -> Path:
        if self.path.exists() and not self.path.is_dir():
            raise CharLSTMError(f"{self.path} exists and is not a folder", "pass a run folder")
        if not self.file(LAST).exists():
            raise CharLSTMError(
                f"nothing to resume: {self.file(LAST)} does not exist",
                "start a new run without --resume, or pass the run's folder with --out",
            )
        return self.file(LAST)

    def preflight(self, need_bytes: int) -> None:
        """The folder can be created (or written) and a checkpoint fits on the disk, checked
        without creating anything."""
        existing = self.path
        while not existing.exists():
            if existing.parent == existing:
                break
            existing = existing.parent
        if not existing.is_dir():
            raise CharLSTMError(
                f"cannot write to run folder {self.path}: {existing} is a file, not a folder",
                "choose a writable --out",
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CharLSTMError(
                f"cannot write to run folder {self.path}: {existing} is not writable",
                "choose a writable --out",
            )
        free = shutil.disk_usage(existing).free
        if free < need_bytes:
            raise CharLSTMError(
                f"only {free / 1e6:.0f} MB free at {existing}; a checkpoint needs about "
                f"{need_bytes / 1e6:.0f} MB",
                "free some disk space or choose another --out",
            )

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharLSTMError(
                f"cannot create run folder {self.path}: {e.strerror}", "choose a writable --out"
            ) from None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on RUN_DIR/.lock. The OS drops it when the process dies, so a
        crash never leaves a run locked; the file records who holds it."""
        with open(self.file(".lock"), "a+") as f:
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # pragma: no cover - no flock (Windows): best effort, no lock
                pass
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise CharLSTMError(
                    f"{self.path} is in use by another charlstm train ({holder})",
                    "wait for it to finish, or choose another --out",
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            remove_stale_temporaries(self.path)  # what a kill -9 left mid-write
            yield

    def check_owns(self, payload: dict) -> None:
        """last.pt belongs to the run recorded in this folder's config.json (same run id): a
        checkpoint copied in from another run is refused, not resumed as this one. Runs from
        before run ids (or a folder without config.json) have nothing to check against."""
        mine = self.run_id()
        theirs = (payload.get("run") or {}).get("run_id") or ""
        if mine and theirs and mine != theirs:
            raise CharLSTMError(
                f"{self.file(LAST)} belongs to another run (run id {theirs}) than the one "
                f"recorded in {self.file(CONFIG)} (run id {mine}): it was copied or moved here",
                "resume it from the folder of the run it came from, or start a new run here "
                "with --force; nothing was changed",
            )

    def run_id(self) -> str:
        """The run id config.json records ("" when there is none to read)."""
        try:
            record = read_json(self.file(CONFIG), "remove it, or start the run anew with --force")
        except FileNotFoundError:
            return ""
        run_id = record.get("run_id") if isinstance(record, dict) else None
        return run_id if isinstance(run_id, str) else ""

    def clear(self) -> None:
        """--force: remove the old run's files (other files in the folder stay)."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)
        for events in self.file(TENSORBOARD).glob("events.out.tfevents.*"):
            events.unlink(missing_ok=True)

    def write_config(self, record: dict) -> None:
        write_text(self.file(CONFIG), json.dumps(record, indent=2) + "\n")

    def promote_best(self) -> None:
        """best.pt becomes a durable copy of last.pt (copy, fsync, rename, fsync the folder)."""
        copy_file(self.file(LAST), self.file(BEST))

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.file(METRICS))


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        """On resume: drop a torn last line and anything logged after the checkpoint's step."""
        if not self.path.exists():
            return
        keep = []
        with open_regular(self.path, METRICS_MAX_BYTES) as f:
            for line in f:
                try:
                    record = json.loads(line.decode("utf-8", errors="replace"))
                    if int(record.get("step", 0)) <= step:
                        keep.append(json.dumps(record))
                except (ValueError, TypeError, AttributeError):
                    continue  # a line torn by a crash, or not ours
        write_text(self.path, "".join(k + "\n" for k in keep))

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def disk_full_error(e: OSError, path: Path, need_bytes: int, step: int) -> CharLSTMError | None:
    """The one-line error for a full disk while writing `path`, or None for another OSError."""
    if e.errno not in DISK_FULL:
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    return CharLSTMError(
        f"the disk is full: writing {path} needs about {need_bytes / 1e6:.0f} MB and "
        f"{free / 1e6:.0f} MB are free; the last checkpoint on disk is intact",
        f"free at least {need_bytes / 1e6:.0f} MB, then continue with --resume "
        f"(step {step:,} was reached; steps since the last save are lost)",
    )
