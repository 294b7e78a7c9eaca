"""prepare.py (`charlstm tokenize`): splits, dtypes, meta.json, folders, bytes, chunk seams, and
every bad input, through the library and through the real CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import charlstm
import charlstm.data.corpus
import charlstm.data.prepare
from charlstm.data.vocab import Vocab
from charlstm.errors import CharLSTMError

BUNDLED = charlstm.data.corpus.bundled_corpus()
SPLITS = ("train", "val", "test")
# every line differs, so a misplaced slice cannot go unnoticed; > 256 distinct characters
VARIED_TEXT = "".join(
    f"line {i}: ünïcödé {chr(0x4E00 + i)}{chr(0x1F600 + i % 64)} e\u0301\r\n" for i in range(300)
)
FLAGS = {
    "level": "--level",
    "normalize": "--normalize",
    "val_frac": "--val-frac",
    "test_frac": "--test-frac",
}


# -- helpers -------------------------------------------------------------------------------------
def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def cli_args(corpus, out, **options) -> list[str]:
    """The `charlstm tokenize` command line for these library options."""
    args = ["tokenize", *([] if corpus is None else [str(corpus)]), "--out", str(out)]
    for name, value in options.items():
        if name in ("lowercase", "force"):
            args += [f"--{name}"] if value else []
        else:
            args += [FLAGS[name], str(value)]
    return args


def load_splits(out: Path) -> dict[str, np.ndarray]:
    return {s: np.load(out / f"{s}.npy", mmap_mode="r") for s in SPLITS}


def read_meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text(encoding="utf-8"))


def all_ids(out: Path) -> np.ndarray:
    return np.concatenate([np.asarray(a) for a in load_splits(out).values()])


def decoded(out: Path) -> str:
    return Vocab.load(out / "tokenizer.json").decode(all_ids(out))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_clean_failure(result, *words: str, exit_code: int = 1) -> None:
    """Exit code, one line on stderr naming ``words``, no traceback anywhere."""
    stderr = result.stderr
    assert result.exit_code == exit_code, (result.stdout, stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stdout + stderr
    assert result.stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


@pytest.fixture(params=["library", "cli"])
def tokenize_with(request, run_cli):
    """``tokenize_with(corpus, out, **options)`` through `charlstm.data.prepare.tokenize` or
    the CLI."""

    def run(corpus, out, **options) -> Path:
        if request.param == "library":
            result = charlstm.data.prepare.tokenize(corpus, out, **options)
            assert result.out == Path(out)
        else:
            result = run_cli(*cli_args(corpus, out, **options))
            assert result.exit_code == 0, result.stderr
            assert "Traceback" not in result.stderr
        return Path(out)

    return run


@pytest.fixture
def tiny_chunks(monkeypatch) -> list:
    """Make tokenize read its source 7 bytes at a time (multi-byte characters straddle reads).

    ``read_pieces`` binds its chunk size when defined, so patching CHUNK_BYTES alone would not
    reach it; the returned list collects the pieces, to prove the seams were really exercised.
    """
    real = charlstm.data.corpus.read_pieces
    pieces: list = []

    def read_small(src, chunk_bytes=None, at_newline=False):
        for piece in real(src, 7, at_newline):
            pieces.append(piece)
            yield piece

    monkeypatch.setattr(charlstm.data.prepare, "read_pieces", read_small)
    return pieces


# -- splits --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("val_frac", "test_frac"), [(0.1, 0.0), (0.1, 0.05), (0.3, 0.2)])
def test_splits_are_contiguous_slices_val_then_test_from_the_end(
    tokenize_with, tmp_path, val_frac, test_frac
):
    corpus = write(tmp_path / "varied.txt", VARIED_TEXT)
    out = tokenize_with(corpus, tmp_path / "out", val_frac=val_frac, test_frac=test_frac)
    vocab = Vocab.load(out / "tokenizer.json")
    splits = load_splits(out)
    n = len(VARIED_TEXT)
    lengths = {s: len(a) for s, a in splits.items()}
    assert sum(lengths.values()) == n
    assert abs(lengths["val"] - val_frac * n) <= 1
    assert abs(lengths["test"] - test_frac * n) <= 1
    train_end, val_end = lengths["train"], lengths["train"] + lengths["val"]
    assert vocab.decode(splits["train"]) == VARIED_TEXT[:train_end]
    assert vocab.decode(splits["val"]) == VARIED_TEXT[train_end:val_end]
    assert vocab.decode(splits["test"]) == VARIED_TEXT[val_end:]
    assert decoded(out) == VARIED_TEXT
    assert read_meta(out)["chars"] == {"total": n, **lengths}


def test_bundled_corpus_gives_nanogpts_split(tokenize_with, tmp_path):
    out = tokenize_with(None, tmp_path / "shakespeare")
    splits = load_splits(out)
    assert {s: len(a) for s, a in splits.items()} == {"train": 1_003_854, "val": 111_540, "test": 0}
    assert all(a.dtype == np.uint8 for a in splits.values())
    meta = read_meta(out)
    assert (meta["vocab_size"], meta["dtype"]) == (65, "uint8")
    # the same ids nanoGPT's data/shakespeare_char/prepare.py computes
    data = BUNDLED.read_text(encoding="utf-8")
    stoi = {ch: i for i, ch in enumerate(sorted(set(data)))}
    n = len(data)
    assert np.array_equal(splits["train"], np.array([stoi[c] for c in data[: int(n * 0.9)]]))
    assert np.array_equal(splits["val"], np.array([stoi[c] for c in data[int(n * 0.9) :]]))


def test_default_output_folder_is_data_slash_corpus_name(run_cli, tiny_text):
    result = run_cli("tokenize", tiny_text, "--level", "byte", "--normalize", "nfc")
    assert result.exit_code == 0, result.stderr
    assert (Path("data") / "tiny-byte-nfc" / "train.npy").is_file()  # cwd is a scratch folder


def test_test_frac_zero_writes_an_empty_test_array(tokenize_with, tiny_text, tmp_path):
    out = tokenize_with(tiny_text, tmp_path / "out", test_frac=0.0)
    test = np.load(out / "test.npy", mmap_mode="r")
    assert test.shape == (0,)
    assert test.dtype == np.load(out / "train.npy", mmap_mode="r").dtype


def test_arrays_open_as_memmaps(tokenize_with, tiny_text, tmp_path):
    out = tokenize_with(tiny_text, tmp_path / "out", test_frac=0.1)
    for split, arr in load_splits(out).items():
        assert isinstance(arr, np.memmap), split
        assert arr.ndim == 1 and len(arr) > 0


# -- dtypes --------------------------------------------------------------------------------------
def test_up_to_256_symbols_is_uint8(tokenize_with, tmp_path):
    text = "".join(map(chr, range(32, 32 + 256))) * 4
    out = tokenize_with(write(tmp_path / "c.txt", text), tmp_path / "out")
    assert read_meta(out)["vocab_size"] == 256
    assert all(a.dtype == np.uint8 for a in load_splits(out).values())
    assert decoded(out) == text


def test_more_than_256_symbols_is_uint16(tokenize_with, tmp_path):
    corpus = write(tmp_path / "varied.txt", VARIED_TEXT)
    out = tokenize_with(corpus, tmp_path / "out")
    meta = read_meta(out)
    assert meta["vocab_size"] == len(set(VARIED_TEXT)) > 256
    assert meta["dtype"] == "uint16"
    assert all(a.dtype == np.uint16 for a in load_splits(out).values())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(VARIED_TEXT).ids == all_ids(out).tolist()
    assert tok.decode(all_ids(out).tolist()) == VARIED_TEXT


def test_more_than_65536_symbols_is_uint32(tmp_path):
    # astral code points (CJK extension planes and beyond), no surrogates, each one once
    text = "".join(map(chr, range(0x20000, 0x20000 + 70_000)))
    out = tmp_path / "out"
    charlstm.data.prepare.tokenize(write(tmp_path / "huge.txt", text), out)
    meta = read_meta(out)
    assert (meta["vocab_size"], meta["dtype"]) == (70_000, "uint32")
    ids = all_ids(out)
    assert ids.dtype == np.uint32
    assert np.array_equal(ids, np.arange(70_000))


# -- meta.json -----------------------------------------------------------------------------------
def test_meta_json_describes_the_run(tokenize_with, tmp_path):
    corpus = write(tmp_path / "varied.txt", VARIED_TEXT)
    out = tokenize_with(
        corpus, tmp_path / "out", normalize="nfc", lowercase=True, val_frac=0.2, test_frac=0.1
    )
    meta = read_meta(out)
    normalized = Vocab(normalize="nfc", lowercase=True).normalize_text(VARIED_TEXT)
    n = len(normalized)
    assert meta["format"] == "charlstm-tokenized"
    assert meta["format_version"] == 1
    assert meta["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert meta["source"] == str(corpus)
    assert (meta["source_files"], meta["source_bytes"]) == (1, corpus.stat().st_size)
    assert {k: meta[k] for k in ("level", "normalize", "lowercase", "val_frac", "test_frac")} == {
        "level": "char",
        "normalize": "nfc",
        "lowercase": True,
        "val_frac": 0.2,
        "test_frac": 0.1,
    }
    assert meta["vocab_size"] == len(set(normalized))
    assert meta["dtype"] == "uint16"
    lengths = {s: len(a) for s, a in load_splits(out).items()}
    assert meta["chars"] == {"total": n, **lengths}
    assert decoded(out) == normalized


def test_meta_sha256_of_the_bundled_corpus(tmp_path):
    charlstm.data.prepare.tokenize(None, tmp_path / "out", level="byte")
    meta = read_meta(tmp_path / "out")
    assert meta["sha256"] == charlstm.data.corpus.BUNDLED_SHA256
    assert meta["sha256"] == hashlib.sha256(BUNDLED.read_bytes()).hexdigest()
    assert (meta["vocab_size"], meta["chars"]["total"]) == (256, BUNDLED.stat().st_size)


# -- folders -------------------------------------------------------------------------------------
def test_folder_corpus_is_read_in_sorted_order_skipping_hidden_files(tokenize_with, tmp_path):
    folder = tmp_path / "books"
    write(folder / "c.txt", "third\n")
    write(folder / "a.txt", "first\n")
    write(folder / "b" / "inner.txt", "second (nested) ✓\n")
    write(folder / ".hidden.txt", "HIDDEN FILE\n")
    write(folder / ".git" / "config", "HIDDEN FOLDER\n")
    write(folder / "b" / ".DS_Store", "HIDDEN NESTED\n")
    out = tokenize_with(folder, tmp_path / "out", val_frac=0.2)
    expected = "first\nsecond (nested) ✓\nthird\n"
    assert decoded(out) == expected
    meta = read_meta(out)
    assert meta["source_files"] == 3
    assert meta["source_bytes"] == len(expected.encode())
    assert meta["sha256"] == hashlib.sha256(expected.encode()).hexdigest()  # of the concatenation


# -- byte level ----------------------------------------------------------------------------------
def test_byte_level_keeps_arbitrary_bytes_exactly(tokenize_with, tmp_path):
    raw = bytes(range(256)) * 3 + b"invalid \xff\xfe \xc3( truncated \xe2\x82"
    out = tokenize_with(write(tmp_path / "blob.bin", raw), tmp_path / "out", level="byte")
    ids = all_ids(out)
    assert ids.dtype == np.uint8
    assert ids.tobytes() == raw
    meta = read_meta(out)
    assert (meta["level"], meta["vocab_size"], meta["dtype"]) == ("byte", 256, "uint8")


def test_byte_level_text_agrees_with_tokenizer_json(tokenize_with, tmp_path):
    corpus = write(tmp_path / "varied.txt", VARIED_TEXT)
    out = tokenize_with(corpus, tmp_path / "out", level="byte", val_frac=0.2, test_frac=0.1)
    ids = all_ids(out)
    assert ids.tobytes() == VARIED_TEXT.encode("utf-8")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(VARIED_TEXT).ids == ids.tolist()
    assert tok.decode(ids.tolist()) == VARIED_TEXT


# -- normalization -------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["char", "byte"])
@pytest.mark.parametrize(
    ("normalize", "lowercase"), [("nfc", False), ("nfkc", False), ("none", True), ("nfkc", True)]
)
def test_normalized_arrays_agree_with_tokenizer_json(
    tokenize_with, tmp_path, level, normalize, lowercase
):
    text = VARIED_TEXT + "ﬁne Ⅻ ① ΟΔΟΣ ＡＢＣ A\u030a\n"
    corpus = write(tmp_path / "t.txt", text)
    out = tokenize_with(
        corpus, tmp_path / "out", level=level, normalize=normalize, lowercase=lowercase
    )
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = all_ids(out).tolist()
    assert tok.encode(text).ids == ids
    assert tok.decode(ids) == Vocab(normalize=normalize, lowercase=lowercase).normalize_text(text)


# -- chunk seams ---------------------------------------------------------------------------------
SEAMS_TEXT = "".join(
    f"{i} é東😀 e\u0301 a\u0308 Å ﬁ {chr(0x4E00 + i)}{chr(0x10400 + i % 40)}\n" for i in range(60)
)
RUN_ON_TEXT = "😀東é" * 40 + "\n"  # 40 characters straddling 7-byte reads, not one space


@pytest.mark.parametrize("text", [SEAMS_TEXT, RUN_ON_TEXT], ids=["words", "run-on"])
@pytest.mark.parametrize("level", ["char", "byte"])
def test_tiny_chunks_split_characters_and_still_give_exact_ids(
    tokenize_with, tiny_chunks, tmp_path, text, level
):
    corpus = write(tmp_path / "t.txt", text)
    out = tokenize_with(corpus, tmp_path / "out", level=level, test_frac=0.1)
    assert len(tiny_chunks) > 20
    assert not any(0x80 <= p.data[0] < 0xC0 for p in tiny_chunks if p.data)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(text).ids == all_ids(out).tolist()
    assert decoded(out) == text
    assert read_meta(out)["sha256"] == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(("normalize", "lowercase"), [("nfc", False), ("nfkc", True)])
def test_tiny_chunks_with_normalization_cut_only_where_it_is_safe(
    tokenize_with, tiny_chunks, tmp_path, normalize, lowercase
):
    # words of at most 6 bytes, so every 7-byte read holds a space or newline to cut after
    text = "".join(f"{i} e\u0301 a\u0308 A\u030a ﬁ Ⅻ 😀 東 ΟΔΟΣ\n" for i in range(40))
    corpus = write(tmp_path / "t.txt", text)
    out = tokenize_with(corpus, tmp_path / "out", normalize=normalize, lowercase=lowercase)
    assert len(tiny_chunks) > 20
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(text).ids == all_ids(out).tolist()
    assert decoded(out) == Vocab(normalize=normalize, lowercase=lowercase).normalize_text(text)


@pytest.mark.parametrize(("normalize", "lowercase"), [("nfc", False), ("nfkc", True)])
def test_tiny_chunks_with_normalization_read_on_through_lines_without_spaces(
    tokenize_with, tiny_chunks, tmp_path, normalize, lowercase
):
    text = ("e\u0301東a\u0308😀ﬁΟΣ" * 30 + "\n") * 3
    corpus = write(tmp_path / "t.txt", text)
    out = tokenize_with(corpus, tmp_path / "out", normalize=normalize, lowercase=lowercase)
    # one piece per line, in each of the two passes
    assert [p.data.endswith(b"\n") for p in tiny_chunks] == [True] * 6
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode(text).ids == all_ids(out).tolist()
    assert decoded(out) == Vocab(normalize=normalize, lowercase=lowercase).normalize_text(text)


# -- bad inputs: one line on stderr, exit 1 (2 for usage), nothing written ------------------------
@pytest.fixture
def out_dir(tmp_path) -> Path:
    """Where a failing run was asked to write; checked afterwards for leftovers."""
    return tmp_path / "outputs" / "run"


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert list(out.parent.iterdir()) == []


def test_missing_path(run_cli, tmp_path, out_dir):
    result = run_cli("tokenize", tmp_path / "nope.txt", "--out", out_dir)
    assert_clean_failure(result, "corpus not found", "nope.txt")
    assert_nothing_written(out_dir)


def test_empty_file(run_cli, tmp_path, out_dir):
    result = run_cli("tokenize", write(tmp_path / "empty.txt", ""), "--out", out_dir)
    assert_clean_failure(result, "empty.txt", "is empty")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("hidden_only", [False, True])
def test_empty_folder(run_cli, tmp_path, out_dir, hidden_only):
    folder = tmp_path / "books"
    folder.mkdir()
    if hidden_only:
        write(folder / ".notes.txt", "hidden text only\n")
    result = run_cli("tokenize", folder, "--out", out_dir)
    assert_clean_failure(result, "books", "has no files")
    assert_nothing_written(out_dir)


def test_folder_of_empty_files(run_cli, tmp_path, out_dir):
    write(tmp_path / "books" / "a.txt", "")
    result = run_cli("tokenize", tmp_path / "books", "--out", out_dir)
    assert_clean_failure(result, "is empty")
    assert_nothing_written(out_dir)


@pytest.mark.bad_input("tokenize")
def test_invalid_utf8_at_char_level(run_cli, tmp_path, out_dir):
    corpus = write(tmp_path / "bad.txt", b"hello\xffworld\n")
    result = run_cli("tokenize", corpus, "--out", out_dir)
    assert_clean_failure(
        result, "bad.txt", "not valid UTF-8", "0xff", "byte offset 5", "--level byte"
    )
    assert_nothing_written(out_dir)


@pytest.mark.bad_input("tokenize")
def test_invalid_utf8_offset_is_absolute_across_chunks_and_files(
    run_cli, tiny_chunks, tmp_path, out_dir
):
    folder = tmp_path / "books"
    write(folder / "a.txt", "fine ✓\n" * 10)
    write(folder / "b.txt", ("é" * 50 + "\nok").encode() + b"\xc3(")  # 0xc3 at byte 103
    result = run_cli("tokenize", folder, "--out", out_dir)
    assert_clean_failure(result, "b.txt", "0xc3", "byte offset 103", "--level byte")
    assert_nothing_written(out_dir)


@pytest.mark.bad_input("tokenize")
@pytest.mark.parametrize(
    ("flags", "empty_split"),
    [
        (["--val-frac", "0.5", "--test-frac", "0.4"], "train"),
        (["--val-frac", "0"], "val"),
        (["--test-frac", "1e-17"], "test"),
    ],
)
def test_fractions_that_leave_a_split_empty(run_cli, tmp_path, out_dir, flags, empty_split):
    corpus = write(tmp_path / "abc.txt", "abc")
    result = run_cli("tokenize", corpus, "--out", out_dir, *flags)
    assert_clean_failure(result, f"the {empty_split} split would be empty", "3 characters")
    assert_nothing_written(out_dir)


@pytest.mark.bad_input("tokenize")
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--val-frac", "1"], ["--val-frac 1.0 is outside [0, 1)"]),
        (["--val-frac", "-0.1"], ["--val-frac -0.1 is outside [0, 1)"]),
        (["--test-frac", "1.5"], ["--test-frac 1.5 is outside [0, 1)"]),
        (["--test-frac", "-1e-9"], ["--test-frac", "outside [0, 1)"]),
        (["--val-frac", "nan"], ["--val-frac nan is outside"]),
        (["--val-frac", "0.5", "--test-frac", "0.5"], ["= 1", "nothing to train on"]),
        (["--val-frac", "0.6", "--test-frac", "0.7"], ["= 1.3", "less than 1"]),
    ],
)
def test_fractions_out_of_range(run_cli, tiny_text, out_dir, flags, words):
    result = run_cli("tokenize", tiny_text, "--out", out_dir, *flags)
    assert_clean_failure(result, *words, exit_code=2)  # a bad option value: a usage error
    assert_nothing_written(out_dir)


@pytest.mark.bad_input("tokenize")
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--level", "word"], ["--level", "word"]),
        (["--normalize", "nfd"], ["--normalize", "nfd"]),
        (["--val-frac", "lots"], ["--val-frac", "valid number"]),
        (["--no-such-option"], ["--no-such-option"]),
    ],
)
def test_usage_errors_exit_2(run_cli, tiny_text, out_dir, flags, words):
    result = run_cli("tokenize", tiny_text, "--out", out_dir, *flags)
    assert_clean_failure(result, *words, exit_code=2)
    assert_nothing_written(out_dir)


def test_library_rejects_unknown_options_as_user_errors(tiny_text, out_dir):
    with pytest.raises(CharLSTMError, match="unknown level 'word'"):
        charlstm.data.prepare.tokenize(tiny_text, out_dir, level="word")
    with pytest.raises(CharLSTMError, match="unknown normalization 'nfd'"):
        charlstm.data.prepare.tokenize(tiny_text, out_dir, normalize="nfd")
    assert_nothing_written(out_dir)


def test_existing_output_needs_force(run_cli, tiny_text, tmp_path):
    out = tmp_path / "out"
    assert run_cli("tokenize", tiny_text, "--out", out).exit_code == 0
    (tmp_path / "tiny.txt").write_text("a changed text\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_cli("tokenize", tiny_text, "--out", out)
    assert_clean_failure(result, "already exists", "--force")
    assert snapshot(tmp_path) == before

    result = run_cli("tokenize", tiny_text, "--out", out, "--force")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "test.npy",
        "tokenizer.json",
        "train.npy",
        "val.npy",
    ]
    assert decoded(out) == "a changed text\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.txt"]  # no .old-/.tmp-


def test_output_that_is_a_file(run_cli, tiny_text, tmp_path):
    out = write(tmp_path / "out", "a file\n")
    for force in ([], ["--force"]):
        result = run_cli("tokenize", tiny_text, "--out", out, *force)
        assert_clean_failure(result, "exists and is not a folder")
        assert out.read_text() == "a file\n"


# -- a write that fails half way leaves nothing behind -------------------------------------------
def _fail_after_writing_some(monkeypatch, exc: BaseException) -> None:
    def write_then_fail(folder, ids_stream, dtype, bounds):
        (folder / "train.npy").write_bytes(b"half a file")
        raise exc

    monkeypatch.setattr(charlstm.data.prepare, "_write_splits", write_then_fail)


def _fail_saving_vocab(monkeypatch, exc: BaseException) -> None:
    def save(self, path):
        Path(path).write_text("{", encoding="utf-8")
        raise exc

    monkeypatch.setattr(Vocab, "save", save)


@pytest.mark.parametrize("fail", [_fail_after_writing_some, _fail_saving_vocab])
@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_half_written_folder(
    run_cli, monkeypatch, tiny_text, tmp_path, fail, existing
):
    parent = tmp_path / "outputs"
    out = parent / "run"
    if existing:
        assert run_cli("tokenize", tiny_text, "--out", out).exit_code == 0
    before = snapshot(parent) if existing else None
    fail(monkeypatch, OSError(28, "No space left on device"))
    result = run_cli("tokenize", tiny_text, "--out", out, *(["--force"] if existing else []))
    assert_clean_failure(
        result, "writing", "failed", "No space left on device", "nothing was written"
    )
    if existing:
        assert snapshot(parent) == before
    else:
        assert_nothing_written(out)
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_interrupted_write_is_cleaned_up(monkeypatch, tiny_text, out_dir):
    _fail_after_writing_some(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        charlstm.data.prepare.tokenize(tiny_text, out_dir)
    assert_nothing_written(out_dir)


def test_library_failure_is_a_charlstm_error(monkeypatch, tiny_text, out_dir):
    _fail_saving_vocab(monkeypatch, PermissionError(13, "Permission denied"))
    with pytest.raises(CharLSTMError) as err:
        charlstm.data.prepare.tokenize(tiny_text, out_dir)
    assert "Permission denied" in err.value.message
    assert "nothing was written" in err.value.hint
    assert_nothing_written(out_dir)


# -- the process around tokenize: no torch, version, help ----------------------------------------
def test_importing_the_cli_and_prepare_does_not_import_torch():
    code = (
        "import sys, charlstm, charlstm.cli.app, charlstm.data.prepare, charlstm.data.vocab\n"
        "import charlstm.data.corpus\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_tokenize_command_does_not_import_torch(run_cli_subprocess, tiny_text, tmp_path):
    proc = run_cli_subprocess(
        "tokenize", tiny_text, "--out", tmp_path / "out", extra_python_args=("-X", "importtime")
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "train.npy").is_file()
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "charlstm.data.prepare" in imported  # the import log is real
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


@pytest.mark.bad_input("tokenize")
def test_bad_input_in_a_real_process_is_one_line(run_cli_subprocess, tmp_path):
    proc = run_cli_subprocess("tokenize", tmp_path / "nope.txt", "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "corpus not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input("tokenize")
def test_invalid_utf8_with_byte_level_normalization_points_at_the_right_fix(tmp_path):
    src = tmp_path / "bad.bin"
    src.write_bytes(b"fine text\n\xff\xfe more\n")
    with pytest.raises(CharLSTMError, match="--normalize none") as err:
        charlstm.data.prepare.tokenize(src, tmp_path / "out", level="byte", normalize="nfc")
    assert "byte offset 10" in str(err.value)
    assert not (tmp_path / "out").exists()


# -- the output never swallows the corpus ---------------------------------------------------------
@pytest.mark.bad_input("tokenize")
def test_output_that_is_or_holds_the_corpus_is_refused(run_cli, tmp_path):
    """`tokenize proj/mytext.txt --out proj --force` once deleted proj/ with the corpus and an
    unrelated file in it; `tokenize texts/ --out texts --force` the whole corpus folder."""
    proj = tmp_path / "proj"
    write(proj / "mytext.txt", "some text to keep\n" * 10)
    write(proj / "other.txt", "an unrelated file\n")
    before = snapshot(tmp_path)
    for out in (proj, tmp_path):
        for force in ([], ["--force"]):
            result = run_cli("tokenize", proj / "mytext.txt", "--out", out, *force)
            assert_clean_failure(result, "would contain the corpus")
    result = run_cli("tokenize", proj, "--out", proj, "--force")
    assert_clean_failure(result, "would contain the corpus")
    result = run_cli("tokenize", proj, "--out", proj / "tok")
    assert_clean_failure(result, "lies inside the corpus folder", "read as text next time")
    assert snapshot(tmp_path) == before


def test_force_replaces_only_an_earlier_tokenize_output(run_cli, tiny_text, tmp_path):
    mine = tmp_path / "mine"
    write(mine / "thesis.tex", "years of work\n")
    before = snapshot(tmp_path)
    result = run_cli("tokenize", tiny_text, "--out", mine, "--force")
    assert_clean_failure(result, "--force replaces only an earlier tokenize output", "mine")
    assert snapshot(tmp_path) == before


@pytest.mark.bad_input("tokenize")
def test_dot_as_the_output_folder_is_a_clean_refusal(run_cli, tmp_path, monkeypatch):
    corpus = write(tmp_path / "books" / "a.txt", "text\n" * 20)
    monkeypatch.chdir(tmp_path)
    assert_clean_failure(run_cli("tokenize", corpus, "--out", ".", "--force"), "would contain")
    monkeypatch.chdir(tmp_path / "books")
    assert_clean_failure(run_cli("tokenize", "a.txt", "--out", ".", "--force"), "would contain")


def test_utf16_text_is_told_how_to_convert(run_cli, tmp_path, out_dir):
    corpus = write(tmp_path / "win.txt", "Notes saved by Notepad\r\n".encode("utf-16"))
    result = run_cli("tokenize", corpus, "--out", out_dir)
    assert_clean_failure(result, "win.txt is UTF-16 text, not UTF-8", "iconv -f UTF-16 -t UTF-8")
    assert_nothing_written(out_dir)
    byte_level = run_cli("tokenize", corpus, "--out", out_dir, "--level", "byte")
    assert byte_level.exit_code == 0  # raw bytes need no decoding


def test_catalog_split_applies_in_the_library_too(tmp_path):
    corpus = write(tmp_path / "text8", "abc def " * 400)
    write(tmp_path / "text8.json", json.dumps({"val_frac": 0.05, "test_frac": 0.05}))
    result = charlstm.data.prepare.tokenize(corpus, tmp_path / "out")
    meta = read_meta(result.out)
    assert (meta["val_frac"], meta["test_frac"]) == (0.05, 0.05)
    assert result.chars["test"] == 160
