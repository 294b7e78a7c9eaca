"""corpus.py: finding the corpus (file, folder, bundled), reading it in pieces that never cut a
character, and the encodings it refuses with the fix named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import charlstm.data.corpus
from charlstm.data.corpus import open_source, read_pieces, wide_encoding
from charlstm.errors import CharLSTMError

SEAMS_TEXT = "ab é 東 😀 e\u0301 a\u0308\n" * 7


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_bundled_corpus_is_found():
    src = open_source(None)
    assert src.name == "tinyshakespeare" and src.size_bytes == 1_115_394


def test_folder_files_are_sorted_and_hidden_ones_skipped(tmp_path):
    write(tmp_path / "c" / "b.txt", "2")
    write(tmp_path / "c" / "a" / "z.txt", "1")
    write(tmp_path / "c" / ".git" / "x", "hidden")
    src = open_source(tmp_path / "c")
    assert [f.relative_to(src.path).as_posix() for f in src.files] == ["a/z.txt", "b.txt"]


def test_a_tokenize_output_inside_the_corpus_folder_is_not_read_as_text(tmp_path):
    """Ids are not text: an earlier tokenize output (its meta.json says so) in the corpus
    folder is skipped, while an unrelated meta.json is just a file."""
    write(tmp_path / "texts" / "a.txt", "text")
    tok = tmp_path / "texts" / "tok"
    write(tok / "meta.json", json.dumps({"format": "charlstm-tokenized"}))
    write(tok / "train.npy", b"\x93NUMPY ids")
    write(tmp_path / "texts" / "other" / "meta.json", '{"title": "mine"}')
    src = open_source(tmp_path / "texts")
    assert sorted(f.name for f in src.files) == ["a.txt", "meta.json"]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: None, "corpus not found"),
        (lambda p: write(p, b""), "is empty"),
        (lambda p: p.mkdir(), "has no files"),
    ],
)
def test_missing_or_empty_corpus(tmp_path, make, words):
    path = tmp_path / "corpus"
    make(path)
    with pytest.raises(CharLSTMError, match=words):
        open_source(path)


@pytest.mark.parametrize(
    ("encoding", "name"),
    [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")],
)
def test_wide_encodings_are_named_with_the_command_that_converts_them(tmp_path, encoding, name):
    path = write(tmp_path / "notes.txt", "Hello, wide world!\n".encode(encoding) * 3)
    assert wide_encoding(path.read_bytes()) == name
    src = open_source(path)
    with pytest.raises(CharLSTMError, match=f"is {name} text, not UTF-8.*iconv -f {name}"):
        for piece in read_pieces(src):
            charlstm.data.corpus.decode_piece(piece)
    assert wide_encoding(b"plain ascii text " * 10) is None


def test_read_pieces_never_splits_a_character(tmp_path):
    raw = SEAMS_TEXT.encode()
    src = open_source(write(tmp_path / "t.txt", raw))
    for chunk_bytes in (1, 2, 3, 5, 7, 64):
        pieces = list(read_pieces(src, chunk_bytes))
        assert b"".join(p.data for p in pieces) == raw
        assert all(p.data.decode("utf-8") for p in pieces)  # each piece decodes on its own
        assert [p.offset for p in pieces] == list(
            np.cumsum([0] + [len(p.data) for p in pieces[:-1]])
        )


def test_read_pieces_for_normalization_cut_after_newlines_then_spaces(tmp_path):
    text = "one line with no newline, e\u0301 and 東 and 😀 and a\u0308 in it " * 20
    src = open_source(write(tmp_path / "t.txt", text + "\nend\n"))
    pieces = list(read_pieces(src, 16, at_newline=True))
    assert b"".join(p.data for p in pieces) == (text + "\nend\n").encode()
    assert len(pieces) > 20
    assert all(p.data.endswith((b" ", b"\n")) for p in pieces)


def test_read_pieces_reads_on_through_a_line_without_spaces_up_to_a_limit(tmp_path, monkeypatch):
    raw = ("é東😀" * 100 + "\n").encode()
    src = open_source(write(tmp_path / "t.txt", raw))
    assert [p.data for p in read_pieces(src, 7, at_newline=True)] == [raw]
    monkeypatch.setattr(charlstm.data.corpus, "MAX_PIECE_BYTES", 64)
    pieces = list(read_pieces(src, 7, at_newline=True))
    assert b"".join(p.data for p in pieces) == raw
    assert len(pieces) > 5 and max(len(p.data) for p in pieces) < 2 * 64
    assert all(p.data.decode("utf-8") for p in pieces)


def test_text_with_many_nul_characters_is_not_mistaken_for_utf16():
    assert wide_encoding(b"\x00" * 64) is None
    assert wide_encoding(b"a\x00b" * 30) is None
    assert wide_encoding("Hello, world! ".encode("utf-16-be")) == "UTF-16"
