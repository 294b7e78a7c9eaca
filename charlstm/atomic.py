"""Atomic file writes: a temporary file in the same folder, flushed to the disk, then renamed
over the target (and the folder synced), so a crash at any instant leaves the old file or the
new one, never a torn one. Every file charlstm writes goes through here."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; when the block ends without an error it becomes
    `path`, durably. On any error (or Ctrl-C) the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def copy_file(src: str | Path, dst: str | Path) -> None:
    with open(src, "rb") as source, atomic_open(dst) as f:
        shutil.copyfileobj(source, f, 8 << 20)


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside `out` to fill; when the block ends without an error it becomes
    `out` (an old `out` is removed only once the new one is in place). On any error the
    temporary folder is removed and `out` is as it was; an OSError (a full disk, permissions)
    becomes one CharLSTMError that says nothing was written."""
    from charlstm.errors import CharLSTMError

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharLSTMError(f"cannot create {out.parent}: {e.strerror}") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CharLSTMError(
            f"writing {out} failed: {e.strerror or e}",
            "check free disk space and permissions; nothing was written",
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
