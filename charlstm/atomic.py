"""Files on disk: atomic writes, the temporaries a killed writer leaves behind, and bounded
reads of files that someone else may have put in a folder.

Writes go to a temporary file in the same folder, flushed to the disk, then renamed over the
target (and the folder synced), so a crash at any instant leaves the old file or the new one,
never a torn one. Every file charlstm writes goes through here. A temporary is named
`.<name>.tmp-<pid>` (shortened to fit the file system's 255-byte name limit), so that one left
by a process that no longer runs (`kill -9`, a power cut) is recognised and removed by the next
command that opens the folder (`remove_stale_temporaries`).

Reads of files charlstm did not necessarily write (a run folder's metrics.jsonl and
config.json, a tokenized folder's meta.json, a tokenizer.json) go through `read_regular`: a
regular file (never a FIFO, a device or a symlink to one, which would block or never end) of at
most a stated size.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from charlstm.errors import CharLSTMError

#: the longest file name (in bytes) of the common file systems (ext4, xfs, btrfs, apfs, ntfs)
NAME_MAX = 255
#: what a temporary is for: `tmp` a file or folder being written, `old` the folder an atomic
#: folder write replaces, `unpacked` a download being unpacked
TEMP_TAGS = ("tmp", "old", "unpacked")
#: a temporary is stale once its writer is not running here and it has not been written to for
#: this long: a writer on another machine sharing the folder (NFS) has a process id that means
#: nothing here, but it keeps its file's modification time fresh while it writes
STALE_AFTER_S = 60.0
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old|unpacked)-(?P<pid>\d+)$", re.S)


def fit_name(name: str, suffix: str = "", prefix: str = "") -> str:
    """`prefix + name + suffix`, with `name` shortened (its end replaced by a short digest of
    the whole) where the result would pass NAME_MAX bytes: a name near the limit still gets
    its temporaries and derived folders."""
    whole = os.fsencode(prefix + name + suffix)
    if len(whole) <= NAME_MAX:
        return prefix + name + suffix
    digest = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    room = NAME_MAX - len(os.fsencode(prefix + suffix + digest))
    head = os.fsencode(name)[:room]
    while head and (head[-1] & 0xC0) == 0x80:  # never end inside a UTF-8 sequence
        head = head[:-1]
    if head and head[-1] >= 0xC0:
        head = head[:-1]
    return prefix + os.fsdecode(head) + digest + suffix


def temp_path(path: str | Path, tag: str = "tmp", pid: int | None = None) -> Path:
    """The temporary that stands beside `path` while this process writes it."""
    path = Path(path)
    return path.with_name(fit_name(path.name, f".{tag}-{os.getpid() if pid is None else pid}", "."))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale_temporaries(folder: str | Path, of: str | Path | None = None) -> list[Path]:
    """Remove the temporaries in `folder` (those of the target `of` only, if given) whose
    writer no longer runs (and which nobody wrote to for STALE_AFTER_S); return what was
    removed. A folder that an atomic folder write had
    moved aside (`.<name>.old-<pid>`) while its replacement was not yet in place is moved back
    instead: it is the only copy."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or pid_alive(int(match["pid"])):
            continue
        if of is not None and entry.name != temp_path(of, match["tag"], int(match["pid"])).name:
            continue
        path = Path(entry.path)
        target = folder / match["name"]
        try:
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER_S:
                continue
            if match["tag"] == "old" and not target.exists() and len(match["name"]) < NAME_MAX:
                path.rename(target)
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue  # someone else's file, or already gone: not ours to insist on
    return removed


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
    `path`, durably. On any error (or Ctrl-C) the temporary file is removed; one a killed
    writer left for the same `path` is removed first."""
    path = Path(path)
    remove_stale_temporaries(path.parent, of=path)
    tmp = temp_path(path)
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
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharLSTMError(f"cannot create {out.parent}: {e.strerror}") from None
    remove_stale_temporaries(out.parent, of=out)
    tmp = temp_path(out)
    try:
        tmp.mkdir()
        yield tmp
        if out.exists():
            old = temp_path(out, "old")
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


def _describe_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@contextmanager
def open_regular(path: str | Path, max_bytes: int, fix: str | None = None) -> Iterator[IO[bytes]]:
    """`path` opened for reading, once it is known to be a regular file (a symlink to one is
    fine) of at most `max_bytes`: a FIFO, a device (`/dev/zero`) or a socket is refused
    without blocking, and so is a file too large. Reads past the size it had when opened are
    not made (a file that grows meanwhile ends where it was)."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise CharLSTMError(f"{path} is a folder, not a file", fix) from None
        raise CharLSTMError(f"cannot read {path}: {e.strerror}", fix) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CharLSTMError(
                f"{path} is {_describe_kind(info.st_mode)}, not a regular file",
                fix or "replace it with the file it should be",
            )
        if info.st_size > max_bytes:
            raise CharLSTMError(
                f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} such a file "
                "can sensibly be",
                fix or "check that it is the file it should be",
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield _Bounded(f, info.st_size)


class _Bounded:
    """A binary file that ends at `limit` bytes."""

    def __init__(self, f: IO[bytes], limit: int) -> None:
        self._f, self._left = f, limit

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while self._left > 0:
            line = self._f.readline(self._left)
            if not line:
                return
            self._left -= len(line)
            yield line


def read_regular(path: str | Path, max_bytes: int, fix: str | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (`open_regular`'s rules)."""
    with open_regular(path, max_bytes, fix) as f:
        return f.read()


#: the bound on a metadata file charlstm reads (meta.json, config.json, tokenizer.json): far
#: above any real one (a tokenizer.json of every Unicode character is ~20 MB)
METADATA_MAX_BYTES = 64 << 20


def read_json(path: str | Path, fix: str | None = None, max_bytes: int = METADATA_MAX_BYTES):
    """A small JSON file (`read_regular`'s rules), parsed; not UTF-8 or not JSON is one
    CharLSTMError that names the file and `fix`. A missing file raises FileNotFoundError."""
    import json

    data = read_regular(path, max_bytes, fix)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        detail = "not UTF-8" if isinstance(e, UnicodeDecodeError) else f"not valid JSON: {e}"
        raise CharLSTMError(f"cannot read {path}: {detail}", fix) from None


#: metrics.jsonl: a line of ~250 bytes per logged step, so ~8 million records
METRICS_MAX_BYTES = 2 << 30
#: a checkpoint: weights and optimizer state of the largest model that fits a big machine
CHECKPOINT_MAX_BYTES = 256 << 30
