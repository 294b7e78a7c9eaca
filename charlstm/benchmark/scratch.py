"""The work folder of `charlstm bench`: checked before anything is measured (it can be made and
written, and the disk has room for what the chosen sections write), and cleaned afterwards.

With no --workdir it is a folder of this run's own, made with `mkdtemp` (mode 0700: private to
the user) in the system's temporary folder and removed when the bench ends, however it ends.
A --workdir the user names is kept when the bench succeeds (its generated text and tokenized
data are reused next time); when the bench fails or is stopped, what this run added to it is
removed again, so no partial 100 MB text is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from charlstm.atomic import remove_stale_temporaries
from charlstm.config import PRESETS
from charlstm.errors import CharLSTMError

#: tiny shakespeare tokenized, logs and the odd small file
BASE_BYTES = 64 << 20


def checkpoint_bytes(preset: str, vocab_size: int = 256) -> int:
    """A preset's checkpoint on disk: fp32 weights and AdamW's two moments."""
    p = PRESETS[preset]
    H, E, L = p["hidden_size"], p["embed_size"], p["num_layers"]
    params = vocab_size * E + 4 * H * (E + H + 2) + (L - 1) * 4 * H * (2 * H + 2) + H * vocab_size
    return params * 4 * 3


def disk_needed(corpus_mb: int, presets: list[str], sections: set[str]) -> int:
    """Bytes the chosen sections write at most: the generated text and its char (uint16 ids)
    and byte (uint8) tokenizations, and three checkpoints per trained preset."""
    need = BASE_BYTES
    if sections & {"tokenize", "memory"}:
        need += (corpus_mb << 20) * 4
    if sections & {"train", "eval", "sample", "memory"}:
        need += 3 * sum(checkpoint_bytes(p) for p in {*presets, "small"})
    return need


def _check_room(folder: Path, need: int, option: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CharLSTMError(
            f"the bench needs about {need / 1e9:.2f} GB in {folder} and {free / 1e9:.2f} GB "
            "are free",
            f"pass a smaller --corpus-mb, fewer --section/--preset, or {option} on a disk "
            "with room",
        )


@contextmanager
def work_folder(workdir: str | Path | None, need_bytes: int) -> Iterator[Path]:
    """The bench's work folder, checked (`need_bytes` free) before it is handed out."""
    if workdir is None:
        base = Path(tempfile.gettempdir())
        _check_room(base, need_bytes, "--workdir")
        try:
            path = Path(tempfile.mkdtemp(prefix="charlstm-bench-", dir=base))
        except OSError as e:
            raise CharLSTMError(
                f"cannot make a work folder in {base}: {e.strerror}",
                "set TMPDIR to a writable folder, or pass --workdir",
            ) from None
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
        return
    path = Path(workdir).expanduser()
    fix = "pass a --workdir that can be created and written"
    made = _missing_parents(path)
    before = set(os.listdir(path)) if path.is_dir() else set()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise CharLSTMError(f"--workdir {path} is a file, not a folder", fix) from None
    except OSError as e:
        _remove(made)
        raise CharLSTMError(f"cannot use --workdir {path}: {e.strerror or e}", fix) from None
    try:
        _check_room(path, need_bytes, "--workdir")
    except CharLSTMError:
        _remove(made)
        raise
    remove_stale_temporaries(path)
    try:
        yield path
    except BaseException:
        if made:
            _remove(made)
        else:
            _remove([path / name for name in set(os.listdir(path)) - before])
        raise


def _missing_parents(path: Path) -> list[Path]:
    """The outermost folder of `path` that does not exist yet (what mkdir -p would make)."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return [missing] if missing is not None else []


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # never made, or not ours to remove
                p.unlink()
