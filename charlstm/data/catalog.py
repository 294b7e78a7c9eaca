"""The standard character-level corpora: where they live, how to check them, how they split.

`fetch` downloads one to a folder (streaming, with progress), verifies it, unpacks .zip/.gz,
and writes `<name>.json` beside the text with its standard split, which `charlstm tokenize`
applies when no fractions are given. Nothing partial is ever left where the corpus belongs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from charlstm.errors import CharLSTMError


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    url: str
    filename: str  # the text file it becomes
    size_bytes: int  # of the text file
    description: str
    licence: str
    val_frac: float
    test_frac: float
    download_sha256: str | None = None  # of the downloaded file, where pinned
    member: str | None = None  # file inside a .zip
    text_sha256: str | None = None  # of the unpacked text, where it differs from the download


#: The enwik8/text8 digests (enwik8.zip 36,445,475 B, text8.zip 31,344,016 B) are the ones that
#: Hugging Face `datasets` (datasets/enwik8/dataset_infos.json) and many independent projects
#: pin for mattmahoney.net's files; they were not re-measured here (no internet on this machine).
CATALOG: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            "tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
            "input.txt",
            "tinyshakespeare.txt",
            1_115_394,
            "40,000 lines of Shakespeare (char-rnn, nanoGPT); also bundled with charlstm",
            "public domain",
            0.1,
            0.0,
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        CorpusSpec(
            "enwik8",
            "http://mattmahoney.net/dc/enwik8.zip",
            "enwik8",
            100_000_000,
            "first 10^8 bytes of an English Wikipedia XML dump (Hutter Prize); 90M/5M/5M",
            "Wikipedia text, CC BY-SA",
            0.05,
            0.05,
            "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
            "enwik8",
            "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
        ),
        CorpusSpec(
            "text8",
            "http://mattmahoney.net/dc/text8.zip",
            "text8",
            100_000_000,
            "enwik9 cleaned to lowercase a-z and spaces, first 10^8 characters; 90M/5M/5M",
            "Wikipedia text, CC BY-SA",
            0.05,
            0.05,
            "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232",
            "text8",
            "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7",
        ),
    )
}


def spec(name: str) -> CorpusSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise CharLSTMError(
            f"unknown corpus {name!r}", f"choose one of {', '.join(CATALOG)} (charlstm corpus list)"
        ) from None


def _download(url: str, dest: Path, progress: Callable[[int, int | None], None] | None) -> str:
    """Stream `url` to `dest`; return the sha256 of what arrived."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "charlstm"})
    manual = f"download {url} yourself and pass the file to `charlstm tokenize`"
    try:
        with urllib.request.urlopen(request, timeout=30) as response, open(dest, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while block := response.read(1 << 16):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except urllib.error.HTTPError as e:
        raise CharLSTMError(f"{url} answered HTTP {e.code} ({e.reason})", manual) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise CharLSTMError(f"cannot download {url}: {reason}", manual) from None
    return digest.hexdigest()


def fetch(
    name: str,
    folder: str | Path = "corpora",
    *,
    url: str | None = None,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download, verify and unpack corpus `name` into `folder`; return the text file's path.

    `url` overrides the canonical address (a mirror). A checksum or size mismatch deletes
    what was downloaded and raises.
    """
    s = spec(name)
    folder = Path(folder)
    target = folder / s.filename
    if target.exists() and not force:
        raise CharLSTMError(f"{target} already exists", "pass --force to download it again")
    folder.mkdir(parents=True, exist_ok=True)
    source = url or s.url
    part = folder / f".{s.filename}.part-{os.getpid()}"
    unpacked = folder / f".{s.filename}.unpacked-{os.getpid()}"
    try:
        sha = _download(source, part, progress)
        if s.download_sha256 is not None and sha != s.download_sha256:
            raise CharLSTMError(
                f"{source} does not match the expected sha256 (got {sha[:16]}..., expected "
                f"{s.download_sha256[:16]}...); the download was deleted",
                "try again, or check the mirror",
            )
        text_sha = _unpack(part, unpacked, source, s.member)
        size = unpacked.stat().st_size
        if size != s.size_bytes:
            raise CharLSTMError(
                f"{name} unpacked to {size:,} bytes, expected {s.size_bytes:,}; it was deleted",
                "try again, or check the mirror",
            )
        if s.text_sha256 is not None and text_sha != s.text_sha256:
            raise CharLSTMError(
                f"{name} unpacked to text that does not match the expected sha256 (got "
                f"{text_sha[:16]}..., expected {s.text_sha256[:16]}...); it was deleted",
                "try again, or check the mirror",
            )
        os.replace(unpacked, target)
    finally:
        part.unlink(missing_ok=True)
        unpacked.unlink(missing_ok=True)
    (folder / f"{s.filename}.json").write_text(
        json.dumps({**asdict(s), "source": source, "download_sha256_seen": sha}, indent=2) + "\n"
    )
    return target


def _unpack(archive: Path, dest: Path, source: str, member: str | None) -> str:
    """The text out of a .zip (its member) or .gz, or the file as is; return its sha256."""
    digest = hashlib.sha256()

    def copy(f: BinaryIO) -> None:
        with open(dest, "wb") as out:
            while block := f.read(1 << 20):
                out.write(block)
                digest.update(block)

    try:
        if source.endswith(".zip"):
            with zipfile.ZipFile(archive) as z, z.open(member or z.namelist()[0]) as f:
                copy(f)
        elif source.endswith(".gz"):
            with gzip.open(archive) as f:
                copy(f)
        else:
            with open(archive, "rb") as f:
                copy(f)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as e:
        raise CharLSTMError(f"cannot unpack what {source} sent: {e}", "try again") from None
    return digest.hexdigest()


def recorded_split(corpus: str | Path | None) -> tuple[float, float] | None:
    """The standard (val_frac, test_frac) recorded beside a fetched corpus, if any."""
    if corpus is None:
        return None
    sidecar = Path(f"{corpus}.json")
    try:
        meta = json.loads(sidecar.read_text())
        return float(meta["val_frac"]), float(meta["test_frac"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
