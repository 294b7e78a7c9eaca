"""Finding and reading corpora: the bundled default, a file, or a folder of text files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charlstm.config import cache_root  # noqa: F401  (re-exported: catalog and dataset use it)
from charlstm.errors import CharLSTMError

BUNDLED_NAME = "tinyshakespeare"
BUNDLED_FILE = "tinyshakespeare.txt"
BUNDLED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# Small enough that every per-piece temporary (str, code points, ids) stays in cache and is
# reused by the allocator instead of being page-faulted in afresh: 64 KiB tokenizes ~2x faster
# than 8 MiB and keeps peak memory flat; numpy's per-call overhead is still negligible.
CHUNK_BYTES = 64 << 10
# For normalization, a piece may grow this far looking for a newline or space to end at.
MAX_PIECE_BYTES = 8 << 20


def bundled_corpus() -> Path:
    """Path of the bundled tiny shakespeare: package data in a wheel, corpora/ in a checkout."""
    from importlib.resources import files

    packaged = Path(str(files("charlstm"))) / "corpora" / BUNDLED_FILE
    if packaged.is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "corpora" / BUNDLED_FILE
    if checkout.is_file():
        return checkout
    raise CharLSTMError(
        "the bundled corpus is missing from this installation",
        "reinstall charlstm or pass a corpus path",
    )


@dataclass(frozen=True)
class Source:
    """A corpus on disk: one file, or the regular files of a folder in sorted order."""

    path: Path
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        """A short name for default output folders (file stem or folder name)."""
        return self.path.stem if self.path.is_file() else self.path.name

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def open_source(corpus: str | Path | None) -> Source:
    """Resolve a corpus argument (None = the bundled corpus) and list its files."""
    path = bundled_corpus() if corpus is None else Path(corpus).expanduser()
    if not path.exists():
        raise CharLSTMError(f"corpus not found: {path}", "pass an existing text file or folder")
    if path.is_file():
        files: tuple[Path, ...] = (path,)
    elif path.is_dir():
        files = tuple(
            sorted(
                (
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                    and not _in_tokenized_folder(p, path)
                ),
                key=lambda p: p.relative_to(path).as_posix(),
            )
        )
        if not files:
            raise CharLSTMError(f"corpus folder {path} has no files", "put text files in it")
    else:
        raise CharLSTMError(f"corpus {path} is not a regular file or folder")
    for f in files:
        try:
            with open(f, "rb") as fh:
                kind = model_file_kind(fh)
        except OSError as e:
            raise CharLSTMError(f"cannot read {f}: {e.strerror}", "check its permissions") from None
        if kind is not None:
            raise CharLSTMError(
                f"{f} is {kind}, not text to train on",
                f"to continue its run: charlstm train --out {f.parent} --resume; to use it: "
                f"charlstm sample {f} (or eval, inspect, serve); to train, pass a text file or a "
                "tokenized folder",
            )
    src = Source(path, files)
    if src.size_bytes == 0:
        raise CharLSTMError(f"corpus {path} is empty", "give it some text")
    return src


def model_file_kind(f: BinaryIO) -> str | None:
    """What a file holds when it is a model rather than text ("a charlstm checkpoint", "a
    PyTorch file", "safetensors weights"), from its first bytes; None for anything else."""
    head = f.read(16)
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip with <name>/data.pkl in it
        import zipfile

        try:
            f.seek(0)
            archive = zipfile.ZipFile(f)
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if not pickles:
                return None
            with archive.open(pickles[0]) as pickled:  # its strings are stored as they are
                ours = b"charlstm-checkpoint" in pickled.read(1 << 20)
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        return "a charlstm checkpoint" if ours else "a PyTorch file (a model's checkpoint)"
    if len(head) >= 10 and head[8:10] == b'{"':  # 8-byte header length, then JSON
        size = int.from_bytes(head[:8], "little")
        if 0 < size < (100 << 20) and b"dtype" in f.read(min(size, 4096)):
            return "safetensors weights (a model)"
    return None


def _in_tokenized_folder(file: Path, root: Path) -> bool:
    """Whether `file` lies in a `charlstm tokenize` output inside the corpus folder `root`
    (its ids are not text: never read them back as corpus)."""
    from charlstm.atomic import read_json

    for folder in file.parents:
        if folder == root:
            return False
        meta = folder / "meta.json"
        if meta.is_file():
            try:
                if read_json(meta).get("format") == "charlstm-tokenized":
                    return True
            except (OSError, CharLSTMError, AttributeError):
                pass
    return False


def _utf8_safe_cut(data: bytes) -> int:
    """The largest prefix length of ``data`` that does not end inside a UTF-8 sequence."""
    end = len(data)
    j = end - 1
    while j >= max(0, end - 4) and (data[j] & 0xC0) == 0x80:
        j -= 1
    if j < 0 or data[j] < 0xC0:
        return end
    need = 2 if data[j] < 0xE0 else 3 if data[j] < 0xF0 else 4
    return j if j + need > end else end


@dataclass(frozen=True)
class Piece:
    """A run of bytes from one file of a source, cut where a UTF-8 decoder can start again."""

    data: bytes
    file: Path
    offset: int  # byte offset of data[0] within file


def read_pieces(
    src: Source, chunk_bytes: int = CHUNK_BYTES, at_newline: bool = False
) -> Iterator[Piece]:
    """Stream a source in pieces of about ``chunk_bytes``, never splitting a UTF-8 sequence.

    With ``at_newline`` pieces end after a newline (in a line longer than a chunk, after a
    space; with neither, reading on up to MAX_PIECE_BYTES), so Unicode normalization (which
    looks at neighbouring characters) never sees a sequence cut in two: nothing composes with
    or reorders across a newline or a space.
    """
    for path in src.files:
        with open(path, "rb") as f:
            carry = b""
            offset = 0
            while True:
                block = f.read(max(chunk_bytes, len(carry)))  # reading on: grow geometrically
                data = carry + block if carry else block
                if not block:
                    if data:
                        yield Piece(data, path, offset)
                    break
                cut = _utf8_safe_cut(data)
                if at_newline:
                    nl = data.rfind(b"\n", 0, cut)
                    if nl < 0:
                        nl = data.rfind(b" ", 0, cut)
                    if nl >= 0:
                        cut = nl + 1
                    elif len(data) < MAX_PIECE_BYTES:
                        cut = 0
                if cut == 0:  # nothing safe to emit yet: read more
                    carry = data
                    continue
                yield Piece(data[:cut], path, offset)
                offset += cut
                carry = data[cut:]


def wide_encoding(data: bytes) -> str | None:
    """ "UTF-16"/"UTF-32" when `data` (a file's first bytes) is text in a wide encoding: a
    byte-order mark, or the NUL byte beside every ASCII character that such text has."""
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    head = data[: 4096 & ~1]
    if len(head) >= 16:
        even, odd = head[0::2].count(0) / (len(head) // 2), head[1::2].count(0) / (len(head) // 2)
        if max(even, odd) > 0.9 and min(even, odd) < 0.1:  # NULs beside ASCII, on one side
            return "UTF-16"
    return None


def decode_piece(piece: Piece, hint: str = "use --level byte to model raw bytes") -> str:
    """UTF-8 text of a piece, or a CharLSTMError naming the file and byte offset. A file in a
    wide encoding (UTF-16 text is NUL bytes between ASCII letters, which UTF-8 accepts) is
    refused at its first piece, with the command that converts it."""
    wide = wide_encoding(piece.data) if piece.offset == 0 else None
    if wide:
        raise CharLSTMError(
            f"{piece.file} is {wide} text, not UTF-8",
            f"convert it first: iconv -f {wide} -t UTF-8 '{piece.file}' > "
            f"'{piece.file.with_suffix('.utf8.txt')}'",
        )
    try:
        return piece.data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = piece.offset + e.start
        raise CharLSTMError(
            f"{piece.file} is not valid UTF-8 (byte 0x{piece.data[e.start]:02x} at byte "
            f"offset {where})",
            hint,
        ) from None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()
