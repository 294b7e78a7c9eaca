"""`charlstm corpus list/get` against an HTTP server on 127.0.0.1 started by the test: a good
file, a corrupt one, a 404, a refused connection, one that fails once (retried); the download
cache; .zip and .gz unpacking; recorded splits; pooch missing."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import socket
import sys
import threading
import zipfile
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

import charlstm.data.catalog as catalog
from charlstm.errors import CharLSTMError

TEXT = ("It was the best of times, it was the worst of times.\n" * 200).encode()


def _zip(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(member, data)
    return buf.getvalue()


FILES = {
    "/plain.txt": TEXT,
    "/corpus.zip": _zip("corpus", TEXT),
    "/corpus.gz": gzip.compress(TEXT),
    "/corrupt.txt": TEXT[:-10] + b"XXXXXXXXXX",
}


REQUESTS: Counter = Counter()  # path -> GET requests the server has answered


@pytest.fixture(autouse=True)
def no_retries(monkeypatch):
    """A failed download is tried once: pooch retries every failure (a 404 too) after 1 s, 2 s;
    test_a_failed_download_is_retried covers the retries."""
    monkeypatch.setattr(catalog, "DOWNLOAD_RETRIES", 0)


@pytest.fixture(scope="module")
def server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            REQUESTS[self.path] += 1
            if self.path == "/flaky.txt" and REQUESTS[self.path] == 1:
                self.send_error(503, "Service Unavailable")
                return
            body = FILES.get(self.path.replace("/flaky.txt", "/plain.txt"))
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def entry(monkeypatch):
    """A catalog entry for the served text, with its real checksum and size."""
    spec = catalog.CorpusSpec(
        "toy",
        "http://127.0.0.1:9/plain.txt",
        "toy.txt",
        len(TEXT),
        "a toy",
        "none",
        0.05,
        0.05,
        hashlib.sha256(TEXT).hexdigest(),
    )
    monkeypatch.setitem(catalog.CATALOG, "toy", spec)
    return spec


def test_good_download_is_verified_and_records_its_split(server, entry, tmp_path, run_cli):
    result = run_cli("corpus", "get", "toy", "--dir", tmp_path, "--url", f"{server}/plain.txt")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "toy.txt").read_bytes() == TEXT
    meta = json.loads((tmp_path / "toy.txt.json").read_text())
    assert (meta["val_frac"], meta["test_frac"]) == (0.05, 0.05)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # tokenize applies the recorded standard split when no fractions are given
    out = run_cli("tokenize", tmp_path / "toy.txt", "--out", tmp_path / "data")
    assert out.exit_code == 0, out.stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert (meta["val_frac"], meta["test_frac"]) == (0.05, 0.05)
    assert meta["chars"]["test"] > 0
    again = run_cli("corpus", "get", "toy", "--dir", tmp_path, "--url", f"{server}/plain.txt")
    assert again.exit_code == 1 and "--force" in again.stderr


def test_corrupt_download_is_deleted_with_a_clear_error(server, entry, tmp_path, run_cli):
    result = run_cli("corpus", "get", "toy", "--dir", tmp_path, "--url", f"{server}/corrupt.txt")
    assert result.exit_code == 1
    assert "sha256" in result.stderr and "deleted" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_404_names_the_url_and_the_manual_way(server, entry, tmp_path, run_cli):
    url = f"{server}/missing.txt"
    result = run_cli("corpus", "get", "toy", "--dir", tmp_path, "--url", url)
    assert result.exit_code == 1
    assert "404" in result.stderr and url in result.stderr
    assert "yourself" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_names_the_url(entry, tmp_path, run_cli):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/plain.txt"
    result = run_cli("corpus", "get", "toy", "--dir", tmp_path, "--url", url)
    assert result.exit_code == 1
    assert url in result.stderr and "yourself" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", ["/corpus.zip", "/corpus.gz"])
def test_zip_and_gz_are_unpacked(server, entry, tmp_path, monkeypatch, path):
    monkeypatch.setitem(
        catalog.CATALOG, "toy", replace(entry, download_sha256=None, member="corpus")
    )
    out = catalog.fetch("toy", tmp_path, url=server + path)
    assert out.read_bytes() == TEXT


def test_zip_checked_twice_archive_and_unpacked_text(server, entry, tmp_path, monkeypatch):
    """enwik8/text8 style: the archive's sha256 and the unpacked text's are both pinned."""
    pinned = replace(
        entry,
        download_sha256=hashlib.sha256(FILES["/corpus.zip"]).hexdigest(),
        member="corpus",
        text_sha256=hashlib.sha256(TEXT).hexdigest(),
    )
    monkeypatch.setitem(catalog.CATALOG, "toy", pinned)
    assert catalog.fetch("toy", tmp_path / "ok", url=f"{server}/corpus.zip").read_bytes() == TEXT
    monkeypatch.setitem(catalog.CATALOG, "toy", replace(pinned, text_sha256="0" * 64))
    with pytest.raises(CharLSTMError, match="unpacked to text that does not match"):
        catalog.fetch("toy", tmp_path / "bad", url=f"{server}/corpus.zip")
    assert list((tmp_path / "bad").iterdir()) == []


def test_every_catalog_corpus_is_pinned():
    for s in catalog.CATALOG.values():
        for digest in (s.download_sha256, s.text_sha256 or s.download_sha256):
            assert digest is not None and len(digest) == 64 and int(digest, 16) >= 0, s.name
        assert s.url.endswith(".zip") == (s.member is not None), s.name


def test_wrong_size_after_unpacking_is_refused(server, entry, tmp_path, monkeypatch):
    monkeypatch.setitem(catalog.CATALOG, "toy", replace(entry, size_bytes=len(TEXT) + 1))
    with pytest.raises(CharLSTMError, match="expected"):
        catalog.fetch("toy", tmp_path, url=f"{server}/plain.txt")
    assert list(tmp_path.iterdir()) == []


def test_list_names_every_corpus(run_cli):
    result = run_cli("corpus", "list")
    assert result.exit_code == 0
    for name in ("tinyshakespeare", "enwik8", "text8"):
        assert name in result.stderr


def test_unknown_corpus(run_cli, tmp_path):
    result = run_cli("corpus", "get", "wikitext-9000", "--dir", tmp_path)
    assert result.exit_code == 1 and "unknown corpus" in result.stderr


def test_bundled_corpus_matches_the_catalog_checksum():
    from charlstm.data.corpus import bundled_corpus

    data = bundled_corpus().read_bytes()
    spec = catalog.CATALOG["tinyshakespeare"]
    assert hashlib.sha256(data).hexdigest() == spec.download_sha256
    assert len(data) == spec.size_bytes
    assert np.frombuffer(data, np.uint8).max() < 128


def test_a_failed_download_is_retried(server, entry, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "DOWNLOAD_RETRIES", 1)
    REQUESTS["/flaky.txt"] = 0
    out = catalog.fetch("toy", tmp_path, url=f"{server}/flaky.txt")
    assert out.read_bytes() == TEXT
    assert REQUESTS["/flaky.txt"] == 2  # a 503, then the file


def test_a_verified_download_is_cached_and_not_downloaded_again(server, entry, tmp_path):
    url = f"{server}/plain.txt"
    before = REQUESTS["/plain.txt"]
    seen: list[tuple[int, int | None]] = []
    catalog.fetch("toy", tmp_path / "a", url=url, progress=lambda *p: seen.append(p))
    assert REQUESTS["/plain.txt"] == before + 1
    assert seen[-1] == (len(TEXT), len(TEXT))  # the progress callback saw the whole file
    assert catalog.fetch("toy", tmp_path / "b", url=url).read_bytes() == TEXT
    assert catalog.fetch("toy", tmp_path / "a", url=url, force=True).read_bytes() == TEXT
    assert REQUESTS["/plain.txt"] == before + 1  # both from the cache
    cached = list((catalog.cache_root() / "downloads").iterdir())
    assert [p.read_bytes() for p in cached] == [TEXT]
    cached[0].write_bytes(b"damaged")  # a cached copy whose checksum fails is downloaded again
    assert catalog.fetch("toy", tmp_path / "c", url=url).read_bytes() == TEXT
    assert REQUESTS["/plain.txt"] == before + 2


def test_a_corrupt_download_leaves_nothing_in_the_cache(server, entry, tmp_path):
    with pytest.raises(CharLSTMError, match="sha256"):
        catalog.fetch("toy", tmp_path, url=f"{server}/corrupt.txt")
    cache = catalog.cache_root() / "downloads"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_pooch_missing_is_one_line_naming_the_extra(entry, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)
    result = run_cli("corpus", "get", "toy", "--dir", tmp_path)
    assert result.exit_code == 1
    assert "charlstm[download]" in result.stderr and "yourself" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
