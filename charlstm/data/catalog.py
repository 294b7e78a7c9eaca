"""The standard character-level corpora: where they live, how to check them, how they split.

`fetch` downloads one through pooch (an optional extra: retries, the sha256 checked, a cache in
$CHARLSTM_CACHE/downloads so a corpus is downloaded once, progress reported to a callback),
unpacks .zip/.gz into the folder, and writes `<name>.json` beside the text with its standard
split, which `charlstm tokenize` applies when no fractions are given. Nothing partial is ever
left where the corpus belongs, or in the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from charlstm.atomic import read_json, remove_stale_temporaries, temp_path, write_text
from charlstm.config import cache_dir, cache_root  # noqa: F401  (tests patch catalog.cache_root)
from charlstm.errors import CharLSTMError, OptionError

# a failed download (a dropped connection, a checksum mismatch) is tried again this many times,
# 1 s, then 2 s later (pooch's back-off)
DOWNLOAD_RETRIES = 2


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


def check_url(url: str, option: str = "--url") -> None:
    """An http(s) address with a host, checked before anything is created or downloaded."""
    from urllib.parse import urlsplit

    example = f"e.g. {option} https://example.org/mirror/enwik8.zip"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (parsing the port is what checks it)
    except ValueError as e:
        raise OptionError(f"{option} {url!r} is not a valid address ({e})", example) from None
    if parts.scheme not in ("http", "https"):
        got = f"its scheme is {parts.scheme!r}" if parts.scheme else "it has no http:// or https://"
        raise OptionError(f"{option} {url!r} is not an http(s) address: {got}", example)
    if not parts.hostname or any(c.isspace() for c in url):
        raise OptionError(f"{option} {url!r} is not a valid address (no host, or a space)", example)


def _require_pooch():
    try:
        import pooch
    except ImportError:
        raise CharLSTMError(
            "charlstm corpus get downloads with pooch, which is not installed",
            "pip install 'charlstm[download]', or download the corpus yourself and pass the file "
            "to `charlstm tokenize`",
        ) from None
    return pooch


class _Progress:
    """pooch's progress-bar protocol (`total`, `update`, `reset`, `close`) over a callback of
    (bytes done, bytes in all or None)."""

    def __init__(self, report: Callable[[int, int | None], None]) -> None:
        self.report, self.total, self.done = report, 0, 0

    def update(self, n: int) -> None:
        self.done += n
        total = self.total or None  # 0: the server sent no Content-Length
        self.report(min(self.done, total) if total else self.done, total)

    def reset(self) -> None:
        self.done = 0

    def close(self) -> None:
        pass


def _download(s: CorpusSpec, url: str, progress: Callable[[int, int | None], None] | None) -> Path:
    """The file at `url`, checked against the corpus's pinned sha256, in the download cache
    (downloaded only when it is not there already); its path."""
    pooch = _require_pooch()
    import requests  # pooch's own dependency

    cache = cache_dir("downloads")
    suffix = "".join(Path(url.split("?")[0]).suffixes[-1:])
    fname = f"{s.name}-{(s.download_sha256 or 'unpinned')[:16]}{suffix}"
    registry = pooch.create(path=cache, base_url="", registry={fname: s.download_sha256},
                            urls={fname: url}, retry_if_failed=DOWNLOAD_RETRIES)  # fmt: skip
    downloader = pooch.HTTPDownloader(
        progressbar=_Progress(progress) if progress else False,
        chunk_size=1 << 16,
        timeout=30,
        headers={"User-Agent": "charlstm"},
    )
    manual = f"download {url} yourself and pass the file to `charlstm tokenize`"
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")  # the library never prints: no "Downloading data from ..."
    try:
        return Path(registry.fetch(fname, downloader=downloader))
    except requests.exceptions.HTTPError as e:
        code, reason = e.response.status_code, e.response.reason
        raise CharLSTMError(f"{url} answered HTTP {code} ({reason})", manual) from None
    except requests.exceptions.RequestException as e:
        raise CharLSTMError(f"cannot download {url}: {_request_reason(e)}", manual) from None
    except ValueError as e:  # pooch: the sha256 differs, on every try
        if "hash" not in str(e).lower():
            raise CharLSTMError(f"cannot download {url}: {e}", manual) from None
        raise CharLSTMError(
            f"{url} does not match the expected sha256 ({s.download_sha256[:16]}...) after "
            f"{DOWNLOAD_RETRIES + 1} tries; the download was deleted",
            "try again, or check the mirror",
        ) from None
    except OSError as e:
        raise CharLSTMError(
            f"cannot write the download to {cache}: {e.strerror or e}",
            "make $CHARLSTM_CACHE (or ~/.cache/charlstm) writable",
        ) from None
    finally:
        logger.setLevel(level)


def _request_reason(error: Exception) -> str:
    """The cause inside requests' nested message ("Connection refused"), or its first part."""
    text = str(error)
    inner = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return inner.group(1).strip() if inner else text.split(" (Caused by")[0][:160]


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
    what was downloaded and raises. A download whose sha256 is pinned is kept in the cache and
    not downloaded again while its checksum holds (`force` replaces the text in `folder`).
    """
    s = spec(name)
    if url is not None:
        check_url(url)
    folder = Path(folder)
    target = folder / s.filename
    if target.exists() and not force:
        raise CharLSTMError(f"{target} already exists", "pass --force to download it again")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder, of=target)  # what a killed download left
    source = url or s.url
    unpacked = temp_path(target, "unpacked")
    archive = None
    try:
        archive = _download(s, source, progress)
        sha = s.download_sha256 or _sha256(archive)
        text_sha = _unpack(archive, unpacked, source, s.member)
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
        unpacked.unlink(missing_ok=True)
        if archive is not None and s.download_sha256 is None:
            archive.unlink(missing_ok=True)  # unpinned: nothing to check a cached copy against
    write_text(
        folder / f"{s.filename}.json",
        json.dumps({**asdict(s), "source": source, "download_sha256_seen": sha}, indent=2) + "\n",
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def recorded_split(corpus: str | Path | None) -> tuple[float, float] | None:
    """The standard (val_frac, test_frac) recorded beside a fetched corpus, if any."""
    if corpus is None:
        return None
    sidecar = Path(f"{corpus}.json")
    try:
        meta = read_json(sidecar)
        return float(meta["val_frac"]), float(meta["test_frac"])
    except (OSError, CharLSTMError, ValueError, KeyError, TypeError):
        return None
