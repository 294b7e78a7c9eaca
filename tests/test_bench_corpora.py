"""bench/xz_baseline.py's arithmetic and bench/corpora.py's deterministic pieces, on tiny texts."""

from __future__ import annotations

import importlib.util
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    """A bench script as a module (by file: the repo's corpora/ folder shadows the name)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


corpora = _load("corpora")
xz_baseline = _load("xz_baseline")


def test_xz_conditional_bpc_is_the_extra_bytes_of_val_given_train():
    text = "the cat sat on the mat. " * 40 + "ünïcödé tail, the cat sat."
    r = xz_baseline.xz_baseline(text, val_frac=0.1)
    n = len(text)
    assert (r.chars_train, r.chars_val) == (int(n * 0.9), n - int(n * 0.9))  # charlstm's split
    train, val = text[: r.chars_train].encode(), text[r.chars_train :].encode()
    size = lambda b: len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))  # noqa: E731
    assert r.xz_train_bytes == size(train) and r.xz_train_val_bytes == size(train + val)
    assert r.bpc_conditional == pytest.approx(8 * (size(train + val) - size(train)) / r.chars_val)
    assert r.bpc_val_alone == pytest.approx(8 * size(val) / r.chars_val)
    # val repeats train, so knowing train must make it cheaper than val alone
    assert r.bpc_conditional < r.bpc_val_alone
    # characters, not bytes: the tail has multi-byte characters
    assert r.chars_val < len(text[r.chars_train :].encode())


def test_xz_script_table_and_json(tmp_path):
    path = tmp_path / "t.txt"
    line = "to be or not to be, that is the question\n"
    path.write_text(line * 30, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(BENCH / "xz_baseline.py"), str(path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(out.stdout)
    assert row["chars_train"] + row["chars_val"] == 30 * len(line) and row["bpc_conditional"] >= 0
    table = subprocess.run(
        [sys.executable, str(BENCH / "xz_baseline.py"), str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "xz|train bpc" in table.stdout and str(path) in table.stdout


def test_xz_script_rejects_non_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe not text")
    out = subprocess.run(
        [sys.executable, str(BENCH / "xz_baseline.py"), str(path)], capture_output=True, text=True
    )
    assert out.returncode == 1 and "cannot read" in out.stderr and "Traceback" not in out.stderr


def test_take_documents_keeps_whole_documents_within_the_budget():
    docs = [("a", "x" * 40), ("b", "y" * 70), ("c", "z" * 30), ("d", "w" * 25)]
    taken = corpora.take_documents(iter(docs), 100)
    assert [s for s, _ in taken] == ["a", "c", "d"]  # b does not fit and is skipped, not cut


def test_fair_shares_and_proportional_merge():
    assert corpora.fair_shares([10, 1000, 1000], 310) == [10, 150, 150]
    assert corpora.fair_shares([10, 20], 1000) == [10, 20]
    a = [("a", "x" * 10)] * 4  # 40 bytes
    b = [("b", "y" * 40)]  # 40 bytes
    merged = corpora.proportional_merge([a, b])
    assert [s for s, _ in merged] == ["a", "b", "a", "a", "a"]
    assert sorted(merged) == sorted(a + b)


def test_strip_controls_keeps_text_and_drops_markup():
    assert corpora.strip_controls("a\x1fb\tc\n_\x08d\x7f") == "ab\tc\nd"


def test_python_corpus_is_deterministic(tmp_path):
    first = corpora.build("python", tmp_path / "a", budget_bytes=200_000)
    second = corpora.build("python", tmp_path / "b", budget_bytes=200_000)
    assert first.sha256 == second.sha256 and 190_000 <= first.bytes <= 200_000
    text = Path(first.path).read_text(encoding="utf-8")
    assert text.startswith("# ---- ") and len(text) == first.chars


@pytest.mark.skipif(
    not Path("/usr/share/games/fortunes/art").exists(), reason="Debian fortunes not installed"
)
def test_prose_corpus_mixes_all_sources(tmp_path):
    corpus = corpora.build("prose", tmp_path, budget_bytes=100_000)
    assert set(corpus.sources) == set(corpora.PROSE_SOURCES)
    assert corpora.build("prose", tmp_path / "again", budget_bytes=100_000).sha256 == corpus.sha256


def test_missing_source_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(
        corpora.BUILDERS, "russian", lambda: corpora.russian_documents("no-such-package-xyz")
    )
    assert corpora.main([str(tmp_path), "--only", "russian"]) == 1
    assert not (tmp_path / "russian.txt").exists()
    (line,) = capsys.readouterr().err.splitlines()
    assert "no-such-package-xyz package is not installed" in line and "apt-get install" in line


def test_verbatim_coverage_counts_val_characters_inside_long_repeats():
    train = "abcdefghij" * 3
    assert xz_baseline.verbatim_coverage(train, "xxabcdefyy", k=6) == 0.6  # "abcdef" covered
    assert xz_baseline.verbatim_coverage(train, "zzzzzzzzzz", k=6) == 0.0
    assert xz_baseline.verbatim_coverage(train, "abc", k=6) == 0.0  # shorter than k
